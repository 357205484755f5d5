-- Claim up to ARGV[1] messages from a kombu Redis queue, atomically recording
-- each one as unacknowledged in kombu's own bookkeeping, so that a worker killed
-- at any instant loses nothing: kombu's visibility-timeout restore brings back
-- whatever was claimed and never acknowledged.
--
-- KEYS[1]   unacked hash   (delivery tag -> JSON [payload, exchange, routing key])
-- KEYS[2]   unacked index  (zset: delivery tag scored by claim time)
-- KEYS[3..] the queue's lists, highest priority first
-- ARGV[1]   how many to claim at most
-- ARGV[2]   now (seconds since the epoch), the score kombu compares with
-- Returns a flat array: tag1, payload1, tag2, payload2, ...
local wanted = tonumber(ARGV[1])
local claimed = {}
for i = 3, #KEYS do
    if wanted <= 0 then break end
    local payloads = redis.call('RPOP', KEYS[i], wanted)
    if payloads then
        for _, payload in ipairs(payloads) do
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
            if type(tag) ~= 'string' then
                -- Not a kombu message: give it a tag so it can still be tracked and acked.
                tag = 'celery-batching:malformed:' .. redis.sha1hex(payload)
            end
            if type(exchange) ~= 'string' then exchange = '' end
            if type(routing_key) ~= 'string' then routing_key = KEYS[3] end
            -- The payload is embedded verbatim, never re-encoded (cjson would turn [] into {}).
            local record = '[' .. (ok and payload or cjson.encode(payload)) .. ','
                .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']'
            redis.call('HSET', KEYS[1], tag, record)
            redis.call('ZADD', KEYS[2], ARGV[2], tag)
            claimed[#claimed + 1] = tag
            claimed[#claimed + 1] = payload
        end
        wanted = wanted - #payloads
    end
end
return claimed
