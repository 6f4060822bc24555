-- Lease tokens of cluster flow rules to one node, and record its heartbeat, in one round trip.
-- KEYS[2r-1]  rule r's nodes: hash node id -> "<heartbeat expiry ms> <demand per window>"
-- KEYS[2r]    rule r's window: hash "w" window index, "t" tokens taken by all, <node id> tokens it took
-- ARGV        node id, heartbeat ttl ms, lease horizon ms, then per rule: interval ms, threshold, threshold type
--             (0 per node, 1 global), tokens the node wants to hold, tokens it holds, the window they
--             were counted in (-1: none), debt (passes beyond the lease), demand per window
-- Returns     server ms, then per rule: window, ms left in it, live nodes, limit, this node's fair
--             share, tokens granted now (negative: given back), tokens this node has taken in the window
--             (grant and debt included)
-- Time comes from the server (TIME), so nodes agree on windows whatever their clocks say. All keys of an
-- app share a hash tag: one slot in Redis Cluster.
local node = ARGV[1]
local ttl = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
for r = 1, #KEYS / 2 do
  local a = 3 + (r - 1) * 8
  local interval = tonumber(ARGV[a + 1])
  local threshold = tonumber(ARGV[a + 2])
  local ttype = tonumber(ARGV[a + 3])
  local target = tonumber(ARGV[a + 4])
  local held = tonumber(ARGV[a + 5])
  local held_window = tonumber(ARGV[a + 6])
  local debt = tonumber(ARGV[a + 7])
  local demand = tonumber(ARGV[a + 8])
  local nodes, win = KEYS[2 * r - 1], KEYS[2 * r]

  -- heartbeat; entries past their expiry are dropped and not counted
  redis.call('HSET', nodes, node, (now + ttl) .. ' ' .. demand)
  redis.call('PEXPIRE', nodes, ttl * 4)
  local entries = redis.call('HGETALL', nodes)
  local ids, demands = {}, {}
  for i = 1, #entries, 2 do
    local sp = string.find(entries[i + 1], ' ', 1, true)
    if tonumber(string.sub(entries[i + 1], 1, sp - 1)) < now then
      redis.call('HDEL', nodes, entries[i])
    else
      ids[#ids + 1] = entries[i]
      demands[entries[i]] = tonumber(string.sub(entries[i + 1], sp + 1))
    end
  end
  local live = #ids
  local limit = threshold
  if ttype == 0 then limit = threshold * live end

  -- the window's counter, reset when the window changes
  local w = math.floor(now / interval)
  local left = interval - now % interval
  if redis.call('HGET', win, 'w') ~= string.format('%d', w) then
    redis.call('DEL', win)
    redis.call('HSET', win, 'w', string.format('%d', w), 't', 0)
    redis.call('PEXPIRE', win, interval * 2 + 1000)
  end
  local taken = redis.call('HMGET', win, 't', unpack(ids))
  local total = tonumber(taken[1]) or 0
  local got = {}
  for i, id in ipairs(ids) do got[id] = tonumber(taken[i + 1]) or 0 end

  -- max-min fair shares of the limit by demand (water filling): a node asking less than an even split
  -- gets what it asks, the rest is split evenly among the others
  local order = {}
  for i, id in ipairs(ids) do order[i] = id end
  table.sort(order, function(x, y) return demands[x] < demands[y] end)
  local share, rest = {}, limit
  for i, id in ipairs(order) do
    local s = math.min(demands[id], rest / (#order - i + 1))
    share[id] = s
    rest = rest - s
  end

  -- Paced: by a fraction f of the window, a node may have taken its share x (f + one lease horizon), the
  -- fleet the limit x the same; so the limit is spread over the window instead of spent at its start.
  local pace = math.min(1, (interval - left + horizon) / interval)
  -- what the others may still need of their shares in the next horizon (or what is left of the window,
  -- if less: a reserve nobody takes by the window's end is lost) is kept for them; beyond its own share a
  -- node may take what nobody else is expected to need
  local ahead = math.min(horizon, left)
  local reserved = 0
  for _, id in ipairs(ids) do
    if id ~= node then
      reserved = reserved + math.max(0, math.min(share[id] * pace - got[id], demands[id] * ahead / interval))
    end
  end
  local free = limit * pace - total
  local grant
  if held_window == w and held > 2 * target + 1 then
    -- demand fell: give back what it will not use, so others can have it in this window
    grant = target - held
  else
    -- tokens held from an earlier window stay the node's: they were counted there, so every pass is
    -- counted once, and none is lost at a window's end
    local want = math.max(0, target - held)
    grant = math.min(want, free, math.max(share[node] * pace - got[node], free - reserved))
    grant = math.max(0, math.floor(grant))
  end
  if grant + debt ~= 0 then
    redis.call('HINCRBY', win, node, grant + debt)
    redis.call('HINCRBY', win, 't', grant + debt)
  end
  local n = #out
  out[n + 1] = w
  out[n + 2] = left
  out[n + 3] = live
  out[n + 4] = math.floor(limit)
  out[n + 5] = math.floor(share[node])
  out[n + 6] = grant
  out[n + 7] = got[node] + grant + debt
end
return out
