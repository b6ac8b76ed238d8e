/**
 * The Lua scripts of the Redis quota store. Redis runs a script atomically,
 * so each of check-and-charge and refund is one indivisible step on the
 * server: no other replica's charge can slip in between the read and the
 * write. ioredis sends them by EVALSHA and loads them on a NOSCRIPT reply.
 *
 * Every key a script touches is passed in KEYS (Redis Cluster routes by
 * them), and all of one user's keys share the `{user}` hash tag, so they
 * live in one slot.
 */

/**
 * KEYS[1] the user's counter of the day, KEYS[2] the charge's record,
 * KEYS[3] its record in the day before (a retry just after midnight of a
 * charge made before it is not charged again). ARGV[1] cost, ARGV[2] limit,
 * ARGV[3] expiry (unix seconds), ARGV[4] "1" when there is a charge id.
 * Returns {allowed (0/1), used}, or {1, used, 1, its cost now (0 once
 * refunded)} when the charge id was charged already (nothing is charged
 * again).
 */
export const chargeScript = `
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local recorded = ARGV[4] == '1'
if recorded then
  for i = 2, 3 do
    local record = redis.call('HMGET', KEYS[i], 'cost', 'refunded')
    if record[1] then
      if record[2] == '1' then
        return {1, used, 1, 0}
      end
      return {1, used, 1, tonumber(record[1])}
    end
  end
end
local cost = tonumber(ARGV[1])
if used + cost > tonumber(ARGV[2]) then
  return {0, used}
end
used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
if recorded then
  redis.call('HSET', KEYS[2], 'cost', ARGV[1], 'refunded', '0')
  redis.call('EXPIREAT', KEYS[2], ARGV[3])
end
return {1, used}
`;

/**
 * KEYS[1], KEYS[2]: the charge's record and the counter in the current day;
 * KEYS[3], KEYS[4]: the same in the day before. ARGV[1] the expiry of the
 * current day's keys (unix seconds). Returns {refunded, used today}: {0, used
 * today} when refunded already or no such charge exists. An unknown charge
 * is recorded as refunded: one still on its way (sent by a caller that gave
 * up on it) then charges nothing when it lands. While Redis takes no writes
 * (out of memory, a read-only replica) nothing is recorded and the refund
 * still answers: a charge on its way is refused too, and the charge the
 * gateway refunds then is one Redis refused, whose refund, failed, was
 * retried for minutes and logged as a charge kept.
 */
export const refundScript = `
for i = 1, 3, 2 do
  local record = redis.call('HMGET', KEYS[i], 'cost', 'refunded')
  if record[1] then
    if record[2] == '1' then
      break
    end
    redis.call('HSET', KEYS[i], 'refunded', '1')
    local cost = tonumber(record[1])
    local used = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
    if redis.call('EXISTS', KEYS[i + 1]) == 1 then
      redis.call('SET', KEYS[i + 1], math.max(0, used - cost), 'KEEPTTL')
    end
    return {cost, tonumber(redis.call('GET', KEYS[2]) or '0')}
  end
end
if redis.call('EXISTS', KEYS[1], KEYS[3]) == 0 then
  local recorded = redis.pcall('HSET', KEYS[1], 'cost', '0', 'refunded', '1')
  if type(recorded) ~= 'table' or not recorded.err then
    redis.call('EXPIREAT', KEYS[1], ARGV[1])
  end
end
return {0, tonumber(redis.call('GET', KEYS[2]) or '0')}
`;

/**
 * KEYS as for refund; ARGV[1] the charge's final cost. Returns {settled
 * (0/1), used today}: {0, 0} when no such charge exists or it was refunded.
 * The counter moves by the difference, never below 0.
 */
export const settleScript = `
for i = 1, 3, 2 do
  local record = redis.call('HMGET', KEYS[i], 'cost', 'refunded')
  if record[1] then
    if record[2] == '1' then
      return {0, 0}
    end
    local cost = tonumber(ARGV[1])
    local used = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
    local after = math.max(0, used - tonumber(record[1]) + cost)
    redis.call('HSET', KEYS[i], 'cost', ARGV[1])
    if redis.call('EXISTS', KEYS[i + 1]) == 1 then
      redis.call('SET', KEYS[i + 1], after, 'KEEPTTL')
    else
      redis.call('SET', KEYS[i + 1], after)
      redis.call('EXPIRE', KEYS[i + 1], redis.call('TTL', KEYS[i]))
    end
    return {1, tonumber(redis.call('GET', KEYS[2]) or '0')}
  end
end
return {0, 0}
`;
