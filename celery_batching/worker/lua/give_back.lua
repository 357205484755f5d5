-- Return claimed-but-unstarted messages to the front of their queue at once
-- (warm shutdown), instead of waiting for the visibility timeout.
--
-- KEYS[1] unacked hash, KEYS[2] unacked index, KEYS[3] the queue list, KEYS[4] the queue's claimed index
-- ARGV    tag1, payload1, tag2, payload2, ... in claim order
-- Guarded by HDEL, so a message that kombu already restored is not pushed twice.
local returned = 0
for i = #ARGV - 1, 1, -2 do
    local tag, payload = ARGV[i], ARGV[i + 1]
    redis.call('ZREM', KEYS[4], tag)
    if redis.call('HDEL', KEYS[1], tag) == 1 then
        redis.call('ZREM', KEYS[2], tag)
        redis.call('RPUSH', KEYS[3], payload)
        returned = returned + 1
    end
end
return returned
