-- Push the messages of one or more calls onto batched queues, each call at most
-- once and only within its queue's bound; all in one atomic step, one round trip.
--
-- A retry of a call (after a timeout whose outcome is unknown) finds the call's
-- sent marker and pushes nothing; the marker is written with the push. The calls
-- are taken in order, so a call's bound counts the messages of those before it.
--
-- KEYS, per call: its sent marker (named after its first task id), the list its
--   messages go on (the queue's own list), then the queue's priority sub-lists
-- ARGV[1]  seconds a marker lives
-- ARGV[2..], per call: how many lists it named in KEYS, the bound on their depth
--   (0: none), how many messages follow, then the messages in the order LPUSH
--   takes them
-- Returns {status, depth} per call, flattened: 1 pushed, 0 already pushed by an
-- earlier attempt, -1 refused (the depth plus its messages would pass the bound).
local answer = {}
local key = 1
local arg = 2
-- In slices: unpack() of thousands of values overflows Lua's stack.
local slice = 1000
while arg <= #ARGV do
    local lists, bound, count = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
    local first, last = arg + 3, arg + 2 + count
    local marker = KEYS[key]
    local status, depth = 1, 0
    if redis.call('EXISTS', marker) == 1 then
        status = 0
    elseif bound > 0 then
        for i = key + 1, key + lists do
            depth = depth + redis.call('LLEN', KEYS[i])
        end
        if depth + count > bound then
            status = -1
        end
    end
    if status == 1 then
        for from = first, last, slice do
            redis.call('LPUSH', KEYS[key + 1], unpack(ARGV, from, math.min(from + slice - 1, last)))
        end
        redis.call('SET', marker, '1', 'EX', ARGV[1])
    end
    answer[#answer + 1] = status
    answer[#answer + 1] = depth
    key = key + 1 + lists
    arg = last + 1
end
return answer
