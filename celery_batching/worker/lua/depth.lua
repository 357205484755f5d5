-- Read one batched queue's depth in one step, whatever its length: the
-- messages waiting in each priority list, those claimed and not yet
-- acknowledged, those parked until their ETA, and the oldest waiting message
-- of each list (its tail: kombu pushes at the head and pops at the tail).
-- Run after prune_claimed.lua in the same transaction, so a claim kombu has
-- restored counts once, as waiting.
--
-- KEYS[1]   the queue's claimed index (zset: tag scored by claim time)
-- KEYS[2]   the queue's scheduled index (zset: tag scored by ETA)
-- KEYS[3..] the queue's lists, highest priority first
-- ARGV[1]   the skiplist member of the claimed index (claim.lua), not a claim
-- Returns claimed, scheduled, then length and tail ('' if empty) of each list.
local claimed = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    claimed = claimed - 1
end
local depth = {claimed, redis.call('ZCARD', KEYS[2])}
for i = 3, #KEYS do
    depth[#depth + 1] = redis.call('LLEN', KEYS[i])
    depth[#depth + 1] = redis.call('LINDEX', KEYS[i], -1) or ''
end
return depth
