-- Token buckets (GCRA form) for every limit of one request, decided and taken in one atomic step.
-- The same math as gateway/ratelimit/bucket.py, in whole microseconds; Redis' own clock is the only clock, so
-- replicas with skewed clocks agree.
--
-- KEYS[i]  the bucket of limit i (all keys of one call share a hash tag, so one Cluster slot)
-- ARGV     per limit, three values: interval_us, capacity, enforced (1, or 0 for a shadow limit)
-- returns  per limit, three integers: allowed (1/0), remaining tokens, microseconds until one more token
--
-- Nothing is taken unless every enforced limit admits; a key lives only until its bucket is full again.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
local takes = {}
local blocked = false

for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local capacity = tonumber(ARGV[3 * i - 1])
  local span = interval * capacity
  local debt = (tonumber(redis.call('GET', KEYS[i])) or now) - now
  if debt < 0 then
    debt = 0
  elseif debt > span then
    debt = span
  end
  local after = debt + interval
  local allowed = after <= span
  local state = debt
  if allowed then
    state = after
    takes[i] = after
  elseif ARGV[3 * i] == '1' then
    blocked = true
  end
  local remaining = math.floor((span - state) / interval)
  local wait = 0
  if state > 0 then
    wait = state - (span - (remaining + 1) * interval)
  end
  out[3 * i - 2] = allowed and 1 or 0
  out[3 * i - 1] = remaining
  out[3 * i] = wait
end

if not blocked then
  for i = 1, #KEYS do
    local after = takes[i]
    if after then
      redis.call('SET', KEYS[i], string.format('%.0f', now + after), 'PX', math.ceil(after / 1000))
    end
  end
end
return out
