-- Park claimed messages whose ETA is in the future: move each one from kombu's
-- unacknowledged bookkeeping into the queue's scheduled set, in one atomic step,
-- so it is always in exactly one of the two. Parked, it is out of reach of the
-- visibility-timeout restore (an ETA further away than the timeout must not run
-- twice); claim.lua takes it back once it is due.
--
-- KEYS[1] unacked hash, KEYS[2] unacked index,
-- KEYS[3] scheduled index (zset: tag -> ETA), KEYS[4] scheduled messages (hash: tag -> payload),
-- KEYS[5] the queue's claimed index
-- ARGV    tag1, eta1, payload1, tag2, eta2, payload2, ...
-- Guarded by HDEL, so a message that kombu already restored is not parked as well.
-- Returns the earliest ETA now scheduled ('' if none).
for i = 1, #ARGV, 3 do
    local tag, eta, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    redis.call('ZREM', KEYS[5], tag)
    if redis.call('HDEL', KEYS[1], tag) == 1 then
        redis.call('ZREM', KEYS[2], tag)
        redis.call('HSET', KEYS[4], tag, payload)
        redis.call('ZADD', KEYS[3], eta, tag)
    end
end
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return first[2] or ''
