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
-- ARGV[1] time to live in seconds (0 = none)
-- ARGV[2] late_after (epoch seconds, '' = never): the batch's earliest; past it every result is once
--         (a result taken for once that is not late stores just the same: no final one is there)
-- ARGV[3] once flags, one character per result ('1' or '0')
-- ARGV[4] each result's reply channel, as its number in the list below (0 = none), comma-separated
-- ARGV[5] joined flags, one character per reply channel ('1': its replies go out as one JSON array)
-- ARGV[6 .. 5+C] the reply channels; then, per channel, its replies already joined by the worker
--         ('' for one that is not joined); then the payloads, one per result
-- Returns, per result, 1 when it was stored and 0 when it was refused.
-- Per result only its key and payload travel: a batch's arguments cost the worker little to send.
-- A channel's replies come joined (joining is cheap in the worker, and a Lua concatenation of a
-- batch of vectors costs Redis more than storing them); they are joined here only in the rare
-- batch where a result of that channel was refused.
redis.replicate_commands()  -- TIME before writes (a no-op from Redis 5 on)
local FINAL = {SUCCESS = true, FAILURE = true, REVOKED = true}
local ttl = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local late = ARGV[2] ~= '' and now > tonumber(ARGV[2])
local once_flags, joined_flags = ARGV[3], ARGV[5]
local channel_count = #joined_flags
local first_joined = 6 + channel_count
local first_payload = first_joined + channel_count
local joined, refused = {}, {}
local stored = {}

local function final_is_there(key)
    local current = redis.call('GET', key)
    if not current then
        return false
    end
    local ok, meta = pcall(cjson.decode, current)
    return not ok or type(meta) ~= 'table' or FINAL[meta['status']] == true
end

local i = 0
for channel_number in string.gmatch(ARGV[4], '%d+') do
    i = i + 1
    local key, payload = KEYS[i], ARGV[first_payload + i - 1]
    local once = late or string.byte(once_flags, i) == 49  -- '1'
    local c = tonumber(channel_number)
    stored[i] = 0
    if once and final_is_there(key) then
        if c > 0 then
            refused[c] = true
        end
    else
        if ttl > 0 then
            redis.call('SET', key, payload, 'EX', ttl)
        else
            redis.call('SET', key, payload)
        end
        redis.call('PUBLISH', key, payload)
        stored[i] = 1
        if c > 0 and string.byte(joined_flags, c) == 49 then
            joined[c] = joined[c] or {}
            table.insert(joined[c], payload)
        elseif c > 0 then
            redis.call('PUBLISH', ARGV[5 + c], payload)
        end
    end
end
for c = 1, channel_count do
    local payloads = joined[c]
    if payloads == nil then
    elseif not refused[c] then
        redis.call('PUBLISH', ARGV[5 + c], ARGV[first_joined + c - 1])
    elseif #payloads == 1 then
        redis.call('PUBLISH', ARGV[5 + c], payloads[1])
    else
        redis.call('PUBLISH', ARGV[5 + c], '[' .. table.concat(payloads, ',') .. ']')
    end
end
return stored
