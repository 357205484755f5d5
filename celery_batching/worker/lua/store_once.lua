-- Store a task result unless a final result is already there, and publish it
-- only when stored: a message delivered twice must not overwrite the outcome
-- a client may already have seen. A state that is not final (STARTED, RETRY)
-- may be replaced; a record that is not JSON counts as final.
--
-- KEYS[1] the result key (also the pub/sub channel Celery's clients listen on)
-- ARGV[1] the encoded result, ARGV[2] time to live in seconds (0 = none),
-- ARGV[3] the sender's reply channel, also published to ('' = none)
local FINAL = {SUCCESS = true, FAILURE = true, REVOKED = true}
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if not ok or type(meta) ~= 'table' or FINAL[meta['status']] then
        return 0
    end
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
    redis.call('PUBLISH', ARGV[3], ARGV[1])
end
return 1
