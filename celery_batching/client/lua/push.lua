-- Push one call's messages onto a batched queue, at most once, and only within
-- the queue's bound; all in one atomic step, one round trip.
--
-- A retry of the same call (after a timeout whose outcome is unknown) finds the
-- call's sent marker and pushes nothing; the marker is written with the push.
--
-- KEYS[1]   the call's sent marker (named after its first task id)
-- KEYS[2]   the list the messages go on (the queue's own list)
-- KEYS[3..] the queue's priority sub-lists, counted in its depth
-- ARGV[1]   the bound on the depth (0: none)
-- ARGV[2]   seconds the marker lives
-- ARGV[3..] the messages, in the order LPUSH takes them
-- Returns {status, depth}: 1 pushed, 0 already pushed by an earlier attempt,
-- -1 refused (the depth plus these messages would pass the bound).
if redis.call('EXISTS', KEYS[1]) == 1 then
    return {0, 0}
end
local bound = tonumber(ARGV[1])
local incoming = #ARGV - 2
local depth = 0
if bound > 0 then
    for i = 2, #KEYS do
        depth = depth + redis.call('LLEN', KEYS[i])
    end
    if depth + incoming > bound then
        return {-1, depth}
    end
end
-- In slices: unpack() of thousands of values overflows Lua's stack.
local slice = 1000
for first = 3, #ARGV, slice do
    redis.call('LPUSH', KEYS[2], unpack(ARGV, first, math.min(first + slice - 1, #ARGV)))
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
return {1, depth}
