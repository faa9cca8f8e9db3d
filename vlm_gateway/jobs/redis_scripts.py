"""Lua scripts of the Redis queue: each state change of a job is one atomic script.

A job is a hash ``{prefix}job:{id}``: ``job`` (the Job as JSON), ``owner`` (the submitting key's id),
``kind``, ``created`` (s), ``seq``, ``state`` (queued → running → done), ``attempts``, ``webhook``,
``stop`` (1: cancelled while running); once done ``ok``, ``code``, ``result``, ``error``, ``expires`` (ms),
``cancelled`` (1: its result is the cancellation), and with a webhook ``wh_state`` (pending → delivered |
failed), ``wh_attempts``, ``wh_next`` (s).
"""

# KEYS: job, seq, stream   ARGV: id, job JSON, webhook, max age ms, owner, kind, created (s)
SUBMIT = """
local seq = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'job', ARGV[2], 'seq', seq, 'state', 'queued', 'attempts', 0, 'webhook', ARGV[3],
           'owner', ARGV[5], 'kind', ARGV[6], 'created', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])
return seq
"""

# KEYS: job, started   ARGV: consumer
# -> {'ack'} | {'run', attempts, job JSON, stop} | {'deliver', webhook, ok, code, result, error, wh_attempts,
#    wh_next}   (stop: '1' when it was cancelled while an earlier run ran: it is stored cancelled, not run)
BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'ack'} end
local f = redis.call('HMGET', KEYS[1], 'state', 'seq', 'wh_state')
local seq = tonumber(f[2]) or 0
if seq > (tonumber(redis.call('GET', KEYS[2])) or 0) then redis.call('SET', KEYS[2], seq) end
if f[1] == 'done' then
  if f[3] ~= 'pending' then return {'ack'} end
  local d = redis.call('HMGET', KEYS[1], 'webhook', 'ok', 'code', 'result', 'error', 'wh_attempts', 'wh_next')
  return {'deliver', d[1], d[2], d[3], d[4], d[5], d[6], d[7]}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'consumer', ARGV[1])
return {'run', attempts, redis.call('HGET', KEYS[1], 'job'), redis.call('HGET', KEYS[1], 'stop') or ''}
"""

# KEYS: job   ARGV: ok, code, result, error, expires ms, ttl ms, hold ms (kept while a webhook is pending),
#               cancelled (1: the result is the cancellation)
# -> 1 won (with a webhook: 2), 0 lost (already done), -1 gone
COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'state') == 'done' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'ok', ARGV[1], 'code', ARGV[2], 'result', ARGV[3],
           'error', ARGV[4], 'expires', ARGV[5], 'cancelled', ARGV[8])
local hook = redis.call('HGET', KEYS[1], 'webhook')
if hook and hook ~= '' then
  redis.call('HSET', KEYS[1], 'wh_state', 'pending', 'wh_attempts', 0, 'wh_next', 0)
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[6]), tonumber(ARGV[7])))
  return 2
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""

# KEYS: job   ARGV: code, result, error, expires ms, ttl ms, owner ('': anyone's), hold ms
# -> 1 cancelled (now or before), 2 requested (running: its worker stops it), 0 finished, -1 gone
# (or another key's). A job cancelled while queued keeps its stream entry: the worker that reaches it
# delivers its webhook (``wh_state`` pending), as a finished job's.
CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[6] then return -1 end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'ok', 0, 'code', ARGV[1], 'result', ARGV[2], 'error', ARGV[3],
             'expires', ARGV[4], 'cancelled', 1)
  local hook = redis.call('HGET', KEYS[1], 'webhook')
  if hook and hook ~= '' then
    redis.call('HSET', KEYS[1], 'wh_state', 'pending', 'wh_attempts', 0, 'wh_next', 0)
    redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[5]), tonumber(ARGV[7])))
  else
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
  return 1
end
if state == 'running' then
  redis.call('HSET', KEYS[1], 'stop', 1)
  return 2
end
if redis.call('HGET', KEYS[1], 'cancelled') == '1' then return 1 end
return 0
"""

# KEYS: job   ARGV: next attempt at (s)   -> attempts so far (0: gone)
WEBHOOK_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'wh_next', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'wh_attempts', 1)
"""

# KEYS: job   ARGV: 'delivered' | 'failed'   (then the job expires when its result would have)
WEBHOOK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'wh_state', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], redis.call('HGET', KEYS[1], 'expires'))
return 1
"""
