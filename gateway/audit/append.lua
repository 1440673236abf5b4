-- Append one writer's records to one audit stream, once. A writer retries a call that failed, and a call
-- that timed out may have landed all the same (a stalled Redis runs it when it wakes, and may run the retry
-- first): whichever attempt runs second finds the writer's mark at or past its records and adds nothing.
-- KEYS[1]: the stream. KEYS[2]: the writer's mark for it: the highest seq of its records already stored.
-- ARGV[1]: the highest seq of this call's records; ARGV[2]: the stream's cap (MAXLEN ~); ARGV[3]: the
-- mark's life in seconds; ARGV[4..]: the records (JSON), in seq order.
-- Returns {records added, entries trimmed by the cap}.
local stored = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) <= stored then
  return {0, 0}
end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
local trimmed = redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
return {#ARGV - 3, trimmed}
