-- Store a batch's task results, and publish each one only when it is stored.
--
-- A result marked "once" is stored only if no final result is there yet: its
-- message may have run elsewhere, and the outcome a client may already have
-- seen must not be overwritten. A result is once when the worker says so (a
-- redelivered message) or when Redis's clock is past its late_after (its
-- message was claimed so long ago that another worker may have restored and
-- run it). That is decided here, as the write executes, and not when the
-- worker sends it: a write sent into a cut link waits in the network for as
-- long as the cut lasts. A state that is not final (STARTED, RETRY) may be
-- replaced; a record that is not JSON counts as final.
--
-- KEYS[i] the result key of result i (also the pub/sub channel Celery's clients listen on)
-- ARGV[1] time to live in seconds (0 = none); then five per result:
--   payload, once ('1' or '0'), late_after (epoch seconds, '' = never),
--   reply channel ('' = none), joined ('1': replies to that channel go out as one JSON array)
-- Returns, per result, 1 when it was stored and 0 when it was refused.
redis.replicate_commands()  -- TIME before writes (a no-op from Redis 5 on)
local FINAL = {SUCCESS = true, FAILURE = true, REVOKED = true}
local ttl = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local joined, channels = {}, {}
local stored = {}

local function final_is_there(key)
    local current = redis.call('GET', key)
    if not current then
        return false
    end
    local ok, meta = pcall(cjson.decode, current)
    return not ok or type(meta) ~= 'table' or FINAL[meta['status']] == true
end

for i, key in ipairs(KEYS) do
    local at = 2 + (i - 1) * 5
    local payload, once, late_after, channel = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
    once = once == '1' or (late_after ~= '' and now > tonumber(late_after))
    stored[i] = 0
    if not (once and final_is_there(key)) then
        if ttl > 0 then
            redis.call('SET', key, payload, 'EX', ttl)
        else
            redis.call('SET', key, payload)
        end
        redis.call('PUBLISH', key, payload)
        stored[i] = 1
        if channel ~= '' and ARGV[at + 4] == '1' then
            if joined[channel] == nil then
                joined[channel] = {}
                channels[#channels + 1] = channel
            end
            table.insert(joined[channel], payload)
        elseif channel ~= '' then
            redis.call('PUBLISH', channel, payload)
        end
    end
end
for _, channel in ipairs(channels) do
    local payloads = joined[channel]
    if #payloads == 1 then
        redis.call('PUBLISH', channel, payloads[1])
    else
        redis.call('PUBLISH', channel, '[' .. table.concat(payloads, ',') .. ']')
    end
end
return stored
