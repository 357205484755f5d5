-- Drop from a queue's claimed index the tags kombu's visibility-timeout
-- restore has taken back. kombu knows nothing of this index: its restore
-- removes a claim from its unacked hash and index only. Only claims older
-- than the visibility timeout can have been restored, so only those are
-- looked at, a bounded number per call.
--
-- KEYS[1] kombu's unacked hash, KEYS[2] the queue's claimed index (zset: tag scored by claim time)
-- ARGV[1] claims scored at or before this (now - visibility timeout) may have been restored
-- ARGV[2] how many such claims to look at most
-- Returns how many were dropped.
local overdue = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local dropped = 0
for _, tag in ipairs(overdue) do
    if redis.call('HEXISTS', KEYS[1], tag) == 0 then
        redis.call('ZREM', KEYS[2], tag)
        dropped = dropped + 1
    end
end
return dropped
