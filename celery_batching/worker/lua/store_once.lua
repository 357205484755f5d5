-- Store a task result unless a final result is already there, and publish it
-- only when stored: a message delivered twice must not overwrite the outcome
-- a client may already have seen.
--
-- KEYS[1] the result key (also the pub/sub channel Celery's clients listen on)
-- ARGV[1] the encoded result, ARGV[2] time to live in seconds (0 = none),
-- ARGV[3] the sender's reply channel, also published to ('' = none)
local stored
if tonumber(ARGV[2]) > 0 then
    stored = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
else
    stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if stored then
    redis.call('PUBLISH', KEYS[1], ARGV[1])
    if ARGV[3] ~= '' then
        redis.call('PUBLISH', ARGV[3], ARGV[1])
    end
    return 1
end
return 0
