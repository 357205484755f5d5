-- Claim up to ARGV[1] messages from a kombu Redis queue, atomically recording
-- each one as unacknowledged in kombu's own bookkeeping, so that a worker killed
-- at any instant loses nothing: kombu's visibility-timeout restore brings back
-- whatever was claimed and never acknowledged.
--
-- Scheduled messages (a future ETA, parked by schedule.lua) whose time has come
-- are claimed first, moved from the scheduled set into the same bookkeeping in
-- this one step, so a due message is never outside Redis's sight either.
--
-- KEYS[1]   unacked hash   (delivery tag -> JSON [payload, exchange, routing key])
-- KEYS[2]   unacked index  (zset: delivery tag scored by claim time)
-- KEYS[3]   scheduled index (zset: delivery tag scored by ETA)
-- KEYS[4]   scheduled messages (hash: delivery tag -> payload)
-- KEYS[5]   this queue's claimed index (zset: delivery tag scored by claim time),
--           so its claimed count is one ZCARD (kombu's index is shared by all queues)
-- KEYS[6..] the queue's lists, highest priority first
-- ARGV[1]   how many to claim at most
-- ARGV[2]   now (seconds since the epoch): due ETAs are those at or before it, and
--           the claim indexes score the claims with it
-- ARGV[3]   the skiplist member, kept in both claim indexes (see below)
-- Returns a flat array: the earliest ETA still scheduled ('' if none),
-- then tag1, payload1, tag2, payload2, ...
local wanted = tonumber(ARGV[1])
local claimed = {''}
local claimed_at = ARGV[2]
-- HSET and ZADD arguments, sent in a few variadic calls rather than three calls per message.
local records, scores = {}, {}

-- The tail kombu's envelope ends with: its properties, delivery_tag last, laid
-- out with spaces (kombu's JSON) or without (orjson's, the fast client's). Matched
-- on the last few hundred bytes instead of decoding the whole message; a
-- message shaped otherwise is decoded with cjson. The captures hold no quote,
-- backslash or control character, so they are JSON strings as they stand.
local TAIL_START = '"delivery_info":'
local TAIL = '^"delivery_info": ?{"exchange": ?"([^"\\%c]*)", ?"routing_key": ?"([^"\\%c]*)"}, ?'
    .. '"priority": ?%d+, ?"body_encoding": ?"base64", ?"delivery_tag": ?"([^"\\%c]+)"}}$'
local TAIL_BYTES = 400

local function from_tail(payload)
    local from = string.find(payload, TAIL_START, math.max(1, #payload - TAIL_BYTES), true)
    if from then
        return string.match(payload, TAIL, from)
    end
end

local function decoded(payload)
    local ok, message = pcall(cjson.decode, payload)
    local tag, exchange, routing_key
    if ok and type(message) == 'table' and type(message['properties']) == 'table' then
        local props = message['properties']
        tag = props['delivery_tag']
        if type(props['delivery_info']) == 'table' then
            exchange = props['delivery_info']['exchange']
            routing_key = props['delivery_info']['routing_key']
        end
    end
    if type(exchange) ~= 'string' then exchange = '' end
    if type(routing_key) ~= 'string' then routing_key = KEYS[6] end
    return ok, tag, cjson.encode(exchange), cjson.encode(routing_key)
end

-- Record one message as claimed, as kombu's own QoS.append would.
local function track(tag, payload)
    local exchange, routing_key, tail_tag = from_tail(payload)
    local record
    if exchange then
        tag = tag or tail_tag
        record = '[' .. payload .. ',"' .. exchange .. '","' .. routing_key .. '"]'
    else
        local ok, own_tag, exchange_json, routing_key_json = decoded(payload)
        tag = tag or own_tag
        -- The payload is embedded verbatim, never re-encoded (cjson would turn [] into {}).
        record = '[' .. (ok and payload or cjson.encode(payload)) .. ',' .. exchange_json .. ',' .. routing_key_json .. ']'
    end
    if type(tag) ~= 'string' then
        -- Not a kombu message: give it a tag so it can still be tracked and acked.
        tag = 'celery-batching:malformed:' .. redis.sha1hex(payload)
    end
    records[#records + 1] = tag
    records[#records + 1] = record
    scores[#scores + 1] = claimed_at
    scores[#scores + 1] = tag
    claimed[#claimed + 1] = tag
    claimed[#claimed + 1] = payload
end

-- In slices: unpack() of thousands of values overflows Lua's stack.
local function variadic(command, key, args)
    local slice = 1000
    for first = 1, #args, slice do
        redis.call(command, key, unpack(args, first, math.min(first + slice - 1, #args)))
    end
end

if wanted > 0 then
    local due = redis.call('ZRANGE', KEYS[3], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, wanted)
    for _, tag in ipairs(due) do
        local payload = redis.call('HGET', KEYS[4], tag)
        redis.call('ZREM', KEYS[3], tag)
        redis.call('HDEL', KEYS[4], tag)
        if payload then
            track(tag, payload)
            wanted = wanted - 1
        end
    end
end

for i = 6, #KEYS do
    if wanted <= 0 then break end
    local payloads = redis.call('RPOP', KEYS[i], wanted)
    if payloads then
        for _, payload in ipairs(payloads) do
            track(nil, payload)
        end
        wanted = wanted - #payloads
    end
end

if #records > 0 then
    -- A zset of up to 128 short members is a listpack, where each insert takes
    -- linear time: a batch claimed into an index holding the batches in flight
    -- took 0.6 of a 1.5 ms claim. A member too long for a listpack keeps each
    -- index a skiplist; scored +inf, no restore ever takes it.
    redis.call('ZADD', KEYS[2], 'NX', '+inf', ARGV[3])
    redis.call('ZADD', KEYS[5], 'NX', '+inf', ARGV[3])
    variadic('HSET', KEYS[1], records)
    variadic('ZADD', KEYS[2], scores)
    variadic('ZADD', KEYS[5], scores)
end

local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if first[2] then claimed[1] = first[2] end
return claimed
