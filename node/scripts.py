"""Lua scripts: every step that must be atomic runs as one script in one hash slot.

Name scripts touch only ``{nicks}`` keys; the publish script only one room's keys; the
stores' scripts (accounts, throttles) only ``{accounts}`` or ``{auth}`` keys.  Every
key a script touches is passed in KEYS (Redis Cluster requires it).  Nothing a user typed
ever becomes Lua source: it arrives as ARGV.

Tokens are ``<node id>/<random hex>``; a name's info JSON carries its holder's token in
its ``token`` field.  Whether an info entry is ours is decided by decoding it (cjson,
under pcall: an unreadable entry is nobody's) and comparing that field with the token
exactly: a token is a credential, and a substring of the JSON (``{``) would match every
entry.  Each script that decides this carries the same ``token_of`` function, written out:
a script is a constant, never spliced together.
"""

from __future__ import annotations

__all__ = ["ATTEMPT", "CLAIM", "PUBLISH_MSG", "REAP", "REFUND", "RELEASE", "RENAME", "RENEW",
           "RESUME", "ROOM_EVENT", "SET_IF_SAME", "UPDATE_INFO"]

# KEYS: nicks, lease, info, owned(node), nodes, alive(node)
# ARGV: folded, token, ttl_ms, info_json, node_id
# Every script that lists this node in `nodes` also makes sure its heartbeat exists:
# right after Redis lost its data a name claimed before the next renewal would otherwise
# belong to a node without a heartbeat, and another node would reap it.
# -> {1, previous info or ''} when claimed (a previous info is a stale holder whose lease
#    ran out: the caller announces its quit), {0, ''} when the name is held.  Idempotent:
#    the holder of the same token (an earlier try whose reply was lost) claims it again.
CLAIM = """
local cur = redis.call('GET', KEYS[2])
if cur then
  if cur == ARGV[2] then return {1, ''} end
  return {0, ''}
end
local old = redis.call('HGET', KEYS[3], ARGV[1]) or ''
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('SET', KEYS[6], '1', 'PX', ARGV[3], 'NX')
return {1, old}
"""

# KEYS: nicks, lease, info, owned(node), nodes, alive(node)
# ARGV: folded, old token, new token, ttl_ms, info_json, node_id
# Compare-and-swap of the lease: only the holder of the old token (the resume credential
# a client got in its welcome) may move a name to this node, whether the old lease is
# still live (its node is dead but not yet expired) or ran out and was not reaped yet.
# The token must be the holder's exactly: the lease's value, or (lease gone) the info
# entry's token field.
# -> {1, previous info} | {0, ''} (the name is free: no lease, no entry) |
#    {-1, ''} (the name is someone's and the token is not its holder's)
RESUME = """
local function token_of(info)  -- the entry's token; nil if missing or unreadable
  if not info then return nil end
  local ok, entry = pcall(cjson.decode, info)
  if ok and type(entry) == 'table' and type(entry.token) == 'string' then
    return entry.token
  end
  return nil
end
local cur = redis.call('GET', KEYS[2])
local old = redis.call('HGET', KEYS[3], ARGV[1])
if ARGV[2] == '' then return {-1, ''} end
if cur then
  if cur ~= ARGV[2] then return {-1, ''} end
elseif not old then
  return {0, ''}
elseif token_of(old) ~= ARGV[2] then
  return {-1, ''}
end
old = old or ''
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[6])
redis.call('SET', KEYS[6], '1', 'PX', ARGV[4], 'NX')
return {1, old}
"""

# KEYS: nicks, lease, info, owned(node)
# ARGV: folded, token
# Compare-and-delete: a holder that lost its lease never deletes a successor's name.
RELEASE = """
local function token_of(info)  -- the entry's token; nil if missing or unreadable
  if not info then return nil end
  local ok, entry = pcall(cjson.decode, info)
  if ok and type(entry) == 'table' and type(entry.token) == 'string' then
    return entry.token
  end
  return nil
end
local cur = redis.call('GET', KEYS[2])
if cur == ARGV[2] then redis.call('DEL', KEYS[2]) end
if cur == ARGV[2] or not cur then
  if token_of(redis.call('HGET', KEYS[3], ARGV[1])) == ARGV[2] then
    redis.call('SREM', KEYS[1], ARGV[1])
    redis.call('HDEL', KEYS[3], ARGV[1])
  end
end
redis.call('SREM', KEYS[4], ARGV[1])
if cur == ARGV[2] then return 1 end
return 0
"""

# KEYS: nicks, new lease, info, owned(node), nodes, old lease, alive(node)
# ARGV: new folded, token, ttl_ms, new info_json, node_id, old folded
# -> {1, stale info or ''} | {0, ''} (new name held by someone else, or, for a new name
#    that folds to the old one, the lease is not ours any more)
RENAME = """
local function token_of(info)  -- the entry's token; nil if missing or unreadable
  if not info then return nil end
  local ok, entry = pcall(cjson.decode, info)
  if ok and type(entry) == 'table' and type(entry.token) == 'string' then
    return entry.token
  end
  return nil
end
local old = ''
if ARGV[1] ~= ARGV[6] then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {0, ''} end
  old = redis.call('HGET', KEYS[3], ARGV[1]) or ''
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[5])
  redis.call('SET', KEYS[7], '1', 'PX', ARGV[3], 'NX')
  if redis.call('GET', KEYS[6]) == ARGV[2] then redis.call('DEL', KEYS[6]) end
  if token_of(redis.call('HGET', KEYS[3], ARGV[6])) == ARGV[2] then
    redis.call('SREM', KEYS[1], ARGV[6])
    redis.call('HDEL', KEYS[3], ARGV[6])
  end
  redis.call('SREM', KEYS[4], ARGV[6])
elseif redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {0, ''}  -- same name, but the lease is not ours any more: never clobber its info
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return {1, old}
"""

# KEYS: info, lease
# ARGV: folded, token, info_json  -> 1 if updated (the name is still ours)
UPDATE_INFO = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: alive(node), nodes, lease_1 .. lease_n
# ARGV: node_id, ttl_ms, token_1 .. token_n
# Renews the node heartbeat and every lease still holding its token; returns the 1-based
# positions of leases that were not ours any more (lost: expired or taken).
RENEW = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
local lost = {}
for i = 3, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  else
    lost[#lost + 1] = i - 2
  end
end
return lost
"""

# KEYS: alive(dead), nodes, nicks, info, owned(dead), lease_1 .. lease_n
# ARGV: dead node id, folded_1 .. folded_n
# Releases the names of a node whose heartbeat expired; returns {folded, info, folded, info..}
# for each name it released (exactly one reaper gets each, so each quit is announced once).
REAP = """
local function token_of(info)  -- the entry's token; nil if missing or unreadable
  if not info then return nil end
  local ok, entry = pcall(cjson.decode, info)
  if ok and type(entry) == 'table' and type(entry.token) == 'string' then
    return entry.token
  end
  return nil
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {} end
local mine = ARGV[1] .. '/'
local out = {}
for i = 2, #ARGV do
  local folded = ARGV[i]
  local lease = KEYS[i + 4]
  local cur = redis.call('GET', lease)
  local info = redis.call('HGET', KEYS[4], folded)
  local holder = token_of(info)
  if holder and string.sub(holder, 1, #mine) == mine
     and (not cur or string.sub(cur, 1, #mine) == mine) then
    redis.call('DEL', lease)
    redis.call('SREM', KEYS[3], folded)
    redis.call('HDEL', KEYS[4], folded)
    out[#out + 1] = folded
    out[#out + 1] = info
  end
  redis.call('SREM', KEYS[5], folded)
end
if redis.call('SCARD', KEYS[5]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return out
"""

# KEYS: history stream, room channel, the message's once-key
# ARGV: envelope JSON without id (starts with '{'), maxlen, once-key ttl_ms, deadline
#       (Unix time in ms)
# XADD and PUBLISH in one atomic step; the id is spliced in as the envelope's first member.
# The once-key makes a retry idempotent: an attempt that timed out may still have run (a
# frozen Redis executes what it had read once it thaws), so a retry of the same message
# returns the id it already got instead of publishing it twice.  The deadline is when the
# node tells the sender the message was not relayed: an attempt Redis gets to only after
# it (read before a freeze, run after the thaw) publishes nothing -> nil.
PUBLISH_MSG = """
local done = redis.call('GET', KEYS[3])
if done then return done end
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[4]) then
  return false
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
redis.call('PUBLISH', KEYS[2], '{"id":"' .. id .. '",' .. string.sub(ARGV[1], 2))
redis.call('SET', KEYS[3], id, 'PX', ARGV[3])
return id
"""

# KEYS: members, history stream, room channel
# ARGV: envelope JSON without id (starts with '{'; '' for none), maxlen, then membership
#       changes: 'set', folded, nick | 'del', folded
# A join, part, quit or nick change of one room: the membership change, and the notice
# stored in the room's stream and published with its id, in one atomic step (so the notice
# takes its place in the room's one order, and gap repair finds it in the stream).
# -> the notice's id; without a notice, the newest id in the stream ('0-0' if empty): a
#    member who joins silently (a resume) is owed exactly what comes after it.
ROOM_EVENT = """
local i = 3
while i <= #ARGV do
  if ARGV[i] == 'set' then
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    redis.call('HDEL', KEYS[1], ARGV[i + 1])
    i = i + 2
  end
end
if ARGV[1] == '' then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last == 0 then return '0-0' end
  return last[1][1]
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
redis.call('PUBLISH', KEYS[3], '{"id":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return id
"""


# --------------------------------------------------------------------------- the stores'

# KEYS: accounts.  ARGV: folded, the entry as read, the new entry
# Compare-and-set of an account entry: a concurrent change or delete is not overwritten.
SET_IF_SAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""

# KEYS: per-name counter, per-address counter.  ARGV: name cap, address cap, window ms
# (a cap of 0 leaves that counter alone).  -> 0: admitted and charged; otherwise the
# milliseconds until the counter at its cap expires (the attempt is refused unchecked).
ATTEMPT = """
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[i])
  if cap > 0 and tonumber(redis.call('GET', key) or '0') >= cap then
    local left = redis.call('PTTL', key)
    if left < 0 then redis.call('PEXPIRE', key, ARGV[3]); left = tonumber(ARGV[3]) end
    return left
  end
end
for i, key in ipairs(KEYS) do
  if tonumber(ARGV[i]) > 0 then
    if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[3]) end
  end
end
return 0
"""

# KEYS: per-name counter, per-address counter.  ARGV: name cap, address cap.
# A successful attempt gives back what ATTEMPT charged.
REFUND = """
for i, key in ipairs(KEYS) do
  if tonumber(ARGV[i]) > 0 and tonumber(redis.call('GET', key) or '0') > 0 then
    redis.call('DECR', key)
  end
end
return 0
"""
