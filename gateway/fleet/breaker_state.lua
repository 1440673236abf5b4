-- One shared breaker's state, moved only by whoever saw the current generation (compare and set).
-- KEYS[1]: the state key. ARGV: expected generation, new state, held (0|1), instance, TTL (ms), channel,
-- breaker name, cause, previous state.
-- Returns {1, new state JSON} when applied (and published), {0, current state JSON or ""} when the
-- generation moved on meanwhile: the caller adopts it, or tries again from it.
local raw = redis.call('GET', KEYS[1])
local gen = 0
if raw then
  gen = tonumber(cjson.decode(raw)['gen']) or 0
end
if gen ~= tonumber(ARGV[1]) then
  return {0, raw or ''}
end
local now = redis.call('TIME')
local new = cjson.encode({
  gen = gen + 1, state = ARGV[2], held = ARGV[3] == '1', by = ARGV[4], breaker = ARGV[7],
  cause = ARGV[8], from = ARGV[9], at = tonumber(now[1]) + tonumber(now[2]) / 1000000,
})
redis.call('SET', KEYS[1], new, 'PX', ARGV[5])
redis.call('PUBLISH', ARGV[6], new)
return {1, new}
