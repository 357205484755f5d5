-- Read one batched queue's depth in one step, whatever its length: the
-- messages waiting in each priority list, those claimed and not yet
-- acknowledged, those parked until their ETA, and the oldest waiting message
-- of each list (its tail: kombu pushes at the head and pops at the tail).
--
-- A claim older than the visibility timeout may have been restored by kombu
-- (which knows nothing of this queue's claimed index): such tags are dropped
-- from the index when kombu's unacked hash no longer has them, a bounded
-- number per call, before counting, so a restored message counts once.
--
-- KEYS[1]   kombu's unacked hash
-- KEYS[2]   the queue's claimed index (zset: tag scored by claim time)
-- KEYS[3]   the queue's scheduled index (zset: tag scored by ETA)
-- KEYS[4..] the queue's lists, highest priority first
-- ARGV[1]   claims scored at or before this (now - visibility timeout) may be restored
-- ARGV[2]   how many such claims to check at most
-- Returns claimed, scheduled, then length and tail ('' if empty) of each list.
local overdue = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, tag in ipairs(overdue) do
    if redis.call('HEXISTS', KEYS[1], tag) == 0 then
        redis.call('ZREM', KEYS[2], tag)
    end
end
local depth = {redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3])}
for i = 4, #KEYS do
    depth[#depth + 1] = redis.call('LLEN', KEYS[i])
    depth[#depth + 1] = redis.call('LINDEX', KEYS[i], -1) or ''
end
return depth
