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

__all__ = ["ATTEMPT", "CLAIM", "PUBLISH_ROUND", "REAP", "REFUND", "RELEASE", "RENAME", "RENEW",
           "RESUME", "ROOM_EVENT", "ROOM_INDEX", "ROOM_RESERVE", "ROOM_STATE", "SET_IF_SAME",
           "UPDATE_INFO"]

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
# The heartbeat is extended first and set only when it is gone: Redis out of memory refuses
# a script whose first write is a SET, but not one that begins with an expiry, so renewals
# (which add nothing) go on through a full Redis and no node's names are reaped meanwhile.
RENEW = """
if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
end
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

# KEYS: history stream, room channel, members, once-key_1 .. once-key_n
# ARGV: bus format (1 or 2), maxlen, once-key ttl_ms, history age in ms (0: none), room
#       idle ttl in ms, then per message: envelope JSON without id (starts with '{'),
#       deadline (Unix time in ms)
# One publishing round's messages of one room, in order: each stored in the stream with
# XADD (its own id) and published, in one atomic step.  Format 2 publishes them all as one
# batch envelope on the channel ('{"v":2,"t":"batch","e":[msg, msg, ...]}', each message
# with its id spliced in as its first member) with SPUBLISH; format 1 publishes each
# message alone, the single-message envelope that nodes of the previous release read,
# with both PUBLISH (they subscribe with classic SUBSCRIBE) and SPUBLISH (for format-2
# nodes): the upgrade mode (see OPERATIONS.md).
# The once-key makes a retry idempotent: an attempt that timed out may still have run (a
# frozen Redis executes what it had read once it thaws), so a retry of the same message
# returns the id it already got instead of publishing it twice.  The deadline is when the
# node tells the sender the message was not relayed: a message Redis gets to only after
# it (read before a freeze, run after the thaw) is neither stored nor published -> nil.
# The stream is trimmed by count (MAXLEN ~) and by age (MINID ~, whole stream nodes at a
# time: cheap, approximate; readers skip what is older).  Messages that arrive after their
# room's last member left (a late publish from an outbox) leave the stream with the room
# idle TTL if it had none: nothing is recreated without a bound.
# Redis refuses a script for lack of memory at its first write only, so a round is stored
# whole or not at all.
# -> one reply per message, in order: its id, or nil (past its deadline).
PUBLISH_ROUND = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local batch = ARGV[1] == '2'
local out = {}
local sent = {}
local stored = false
for i = 4, #KEYS do
  local body = ARGV[2 * i - 2]
  local done = redis.call('GET', KEYS[i])
  if done then
    out[#out + 1] = done
  elseif now_ms > tonumber(ARGV[2 * i - 1]) then
    out[#out + 1] = false
  else
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', body)
    redis.call('SET', KEYS[i], id, 'PX', ARGV[3])
    local item = '{"id":"' .. id .. '",' .. string.sub(body, 2)
    if batch then
      sent[#sent + 1] = item
    else
      redis.call('PUBLISH', KEYS[2], item)
      redis.call('SPUBLISH', KEYS[2], item)
    end
    stored = true
    out[#out + 1] = id
  end
end
if #sent > 0 then
  redis.call('SPUBLISH', KEYS[2], '{"v":2,"t":"batch","e":[' .. table.concat(sent, ',') .. ']}')
end
if stored then
  local age = tonumber(ARGV[4])
  if age > 0 then
    redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%.0f-0', now_ms - age))
  end
  if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
end
return out
"""

# KEYS: members, history stream, room channel, topic, room operators, sessions
# ARGV: envelope JSON without id (starts with '{'; '' for none), maxlen, history age in ms
#       (0: none), room idle ttl in ms, the creation rule for a join to a room that does
#       not exist ('' when this is not a join that may be refused; '0': the join creates
#       it; '-1', '-2', '-3', '-4': refused with that status), bus format (1 or 2), then
#       membership changes: 'set', folded, nick, session tag | 'add', folded, nick, tag |
#       'del', folded | 'drop', folded, tag
# The sessions hash says which session each member entry is (folded -> tag), so that a
# session that ends removes only its own entry: 'drop' removes the entry only while its
# tag is the one given (or the entry has none), and 'add' is a 'set' that counts as a
# change only when the member was not listed.  When every change is an 'add' or a 'drop'
# and none of them changed anything, the notice is neither stored nor published: a node
# announcing the quit of a session that resumed elsewhere meanwhile says nothing, and a
# resume that finds its member entry gone (the old node's quit came first) announces the
# join again.  The sessions hash carries the idle ttl, renewed by every change, and goes
# with the room's last member (a tag it lost only makes 'drop' unconditional).
# A join, part, quit or nick change of one room: the membership change, and the notice
# stored in the room's stream and published with its id, in one atomic step (so the notice
# takes its place in the room's one order, and gap repair finds it in the stream).  The
# notice goes out with SPUBLISH; with bus format 1 also with PUBLISH, for nodes of the
# previous release (classic SUBSCRIBE), as PUBLISH_ROUND does.
# A join to a room that does not exist (no members, no stream, no topic) creates it, or,
# when the creation rule says so, is refused with nothing changed.  The room cap lives in
# the room index ({rooms}, another slot): ROOM_RESERVE decided it before.
# Afterwards the room's keys follow its members: with members they persist; emptied, its
# stream, topic and operators expire after the idle ttl.  Its place in the index is set by
# ROOM_INDEX from what this returns.
# -> {status, id, members, idle until}: status 1 = the room was created, 0 = it existed,
#    negative = refused (id ''); id: the notice's, or without a notice the newest id in
#    the stream ('0-0' if empty): a member who joins silently (a resume) is owed exactly
#    what comes after it; members: the room's members afterwards; idle until: when an
#    emptied room's keys expire (Unix ms; 0 with members or when nothing is left).
ROOM_EVENT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local status = 0
local before = redis.call('HLEN', KEYS[1])
if ARGV[5] ~= '' and before == 0 and redis.call('EXISTS', KEYS[2], KEYS[4]) == 0 then
  if ARGV[5] ~= '0' then return {tonumber(ARGV[5]), '', 0, 0} end
  status = 1
end
local i = 7
local guarded, changed = false, false
while i <= #ARGV do
  local op, folded = ARGV[i], ARGV[i + 1]
  if op == 'set' or op == 'add' then
    local added = redis.call('HSET', KEYS[1], folded, ARGV[i + 2])
    redis.call('HSET', KEYS[6], folded, ARGV[i + 3])
    if op == 'set' or added == 1 then changed = true end
    guarded = guarded or op == 'add'
    i = i + 4
  elseif op == 'drop' then
    guarded = true
    local tag = redis.call('HGET', KEYS[6], folded)
    if (not tag or tag == ARGV[i + 2]) and redis.call('HDEL', KEYS[1], folded) == 1 then
      redis.call('HDEL', KEYS[6], folded)
      changed = true
    end
    i = i + 3
  else
    redis.call('HDEL', KEYS[1], folded)
    redis.call('HDEL', KEYS[6], folded)
    changed = true
    i = i + 2
  end
end
local id
if ARGV[1] == '' or (guarded and not changed) then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last == 0 then id = '0-0' else id = last[1][1] end
else
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
  local age = tonumber(ARGV[3])
  if age > 0 then
    redis.call('XTRIM', KEYS[2], 'MINID', '~', string.format('%.0f-0', now_ms - age))
  end
  local notice = '{"id":"' .. id .. '",' .. string.sub(ARGV[1], 2)
  if ARGV[6] == '1' then redis.call('PUBLISH', KEYS[3], notice) end
  redis.call('SPUBLISH', KEYS[3], notice)
end
local members = redis.call('HLEN', KEYS[1])
local idle_until = 0
if members > 0 then
  redis.call('PEXPIRE', KEYS[6], ARGV[4])
  if before == 0 then
    redis.call('PERSIST', KEYS[2])
    redis.call('PERSIST', KEYS[4])
    redis.call('PERSIST', KEYS[5])
  end
else
  local ttl = tonumber(ARGV[4])
  redis.call('DEL', KEYS[6])
  local kept = redis.call('PEXPIRE', KEYS[2], ttl) + redis.call('PEXPIRE', KEYS[4], ttl)
  redis.call('PEXPIRE', KEYS[5], ttl)
  if kept > 0 then idle_until = now_ms + ttl end
end
return {status, id, members, idle_until}
"""

# KEYS: rooms live, rooms count, rooms idle
# ARGV: room, the room cap (0: none), how long a reservation holds (ms)
# Before a join that may create a room: the room's place under the cap.  A room the index
# knows (live, or idle and not expired) needs none.  Otherwise, under the cap, it is
# entered in idle until the reservation runs out: it counts against the cap from now on,
# is not listed, and disappears by itself if the join never completes (ROOM_INDEX files
# it as live once it did).  Idle entries past their expiry are dropped first.
# -> 0 (known), 1 (reserved), -1 (the cap is reached: nothing changed)
ROOM_RESERVE = """
if redis.call('HGET', KEYS[2], ARGV[1]) then return 0 end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[3]) >= cap then
  return -1
end
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: rooms live, rooms count, rooms idle
# ARGV: room, members, idle until (Unix ms; 0: nothing of the room is left)
# The room's place in the index, as a ROOM_EVENT (or a reconciling read of the room)
# found it: with members it is listed in live with its count (live and count are always
# written together); emptied it moves to idle, scored by when its keys expire, or leaves
# the index when nothing of it is left.  Idle entries past their expiry are dropped when
# a room empties.  Idempotent: a retry, or a reconcile, writes the same.
ROOM_INDEX = """
local members = tonumber(ARGV[2])
if members > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], members)
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 1
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
local idle_until = tonumber(ARGV[3])
if idle_until > now_ms then
  redis.call('ZADD', KEYS[3], idle_until, ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 0
"""

# KEYS: members, history stream, topic
# -> {members, idle until}: what a reconcile of the room index needs to know of a room
#    (idle until: when an emptied room's keys expire, Unix ms; 0 with members or when
#    nothing is left)
ROOM_STATE = """
local members = redis.call('HLEN', KEYS[1])
if members > 0 then return {members, 0} end
local left = math.max(redis.call('PTTL', KEYS[2]), redis.call('PTTL', KEYS[3]))
if left <= 0 then return {0, 0} end
local now = redis.call('TIME')
return {0, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + left}
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
