"""The Lua scripts of the Redis backplane: each runs atomically in one round trip (``EVALSHA``).

Keys and fields are described in ``server/backplane/redis.py``; ``P`` is ``redis.key_prefix``.
"""

from __future__ import annotations

import hashlib

from server.backplane.base import MAX_RESUME_POINTS, TOGETHER_SECONDS

# Sets the floor when the stream is new (or was lost with a Redis restart): ids handed out from
# now on are above it, and an id from before it is reported as expired, never silently skipped.
ENSURE_FLOOR = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then
    redis.call('SET', KEYS[2], last[1][1])
  else
    local t = redis.call('TIME')
    redis.call('SET', KEYS[2], (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - 1) .. '-0')
  end
end
"""

# KEYS: stream, floor, added. ARGV: maxlen, ttl of idempotency keys and versions, key prefix, then
# per event: type, data, rooms, idempotency key, version key, version ('' for none). All events
# of a call are added, or none; one whose version is not above its entity's last accepted one
# (earlier events of the call included) is stale: '' in its place, and its idempotency key
# answers '' from then on. Versions are decimal strings compared by length, then digits.
# Each entry carries ``n``, its ordinal (``added`` once it is counted): a tail that reads n + 2
# after n knows that one entry was trimmed away before it read it. Returns {added, ids}.
PUBLISH = (
    ENSURE_FLOOR
    + """
local ids = {}
local added = tonumber(redis.call('GET', KEYS[3]) or '0')
for i = 4, #ARGV, 6 do
  local key = ARGV[i + 3]
  local id = false
  if key ~= '' then id = redis.call('GET', ARGV[3] .. key) end
  if not id then
    local version_key, version = ARGV[i + 4], ARGV[i + 5]
    local stale = false
    if version_key ~= '' then
      local last = redis.call('GET', ARGV[3] .. version_key)
      if last and (#version < #last or (#version == #last and version <= last)) then
        stale = true
      else
        redis.call('SET', ARGV[3] .. version_key, version, 'EX', ARGV[2])
      end
    end
    if stale then
      id = ''
    else
      added = added + 1
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'type', ARGV[i], 'data', ARGV[i + 1], 'rooms', ARGV[i + 2], 'n', added)
    end
    if key ~= '' then redis.call('SET', ARGV[3] .. key, id, 'EX', ARGV[2]) end
  end
  ids[#ids + 1] = id
end
redis.call('SET', KEYS[3], added)
return {added, ids}
"""
)

COMMAND = (
    ENSURE_FLOOR
    + """
local added = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'cmd', ARGV[2], 'n', added)
"""
)


# The id of the newest event (or the floor when there is none yet), and ``added``: the ordinal
# of that event, where a tail that starts after it counts from.
POSITION = (
    ENSURE_FLOOR
    + """
local added = tonumber(redis.call('GET', KEYS[3]) or '0')
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then return {newest[1][1], added} end
return {redis.call('GET', KEYS[2]), added}
"""
)

# Whether event id ARGV-style string ``a`` is older than ``b`` (ids are "ms-seq").
OLDER = """
local function older(a, b)
  local am, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bm, bseq = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return false end
  if tonumber(am) ~= tonumber(bm) then return tonumber(am) < tonumber(bm) end
  return tonumber(aseq) < tonumber(bseq)
end
"""

# KEYS: stream, floor, added, the user's resume points, the user's leases. ARGV: the resume window
# in ms, this process's lease field. The position, then where to resume: the oldest point saved
# within the window, taken (``take_resume_point`` in base.py: the next point, if saved together
# with it, inherits its position), and the leases of other processes (a process that was killed
# saved nothing). A lease "POSITION|COUNT" stands for COUNT connections: a reconnect that uses it
# takes one, so a dead process's lease resumes its clients once each, not every reconnect of
# those users from then on (a live process writes its leases again every heartbeat interval).
# Points are ZSET members "POSITION|TAG" (TAG makes each connection's point its own) scored by
# when they were saved.
START_POSITION = (
    ENSURE_FLOOR
    + OLDER
    + """
local position = redis.call('GET', KEYS[2])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then position = newest[1][1] end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[1]))
local saved = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
local first, second
for i = 1, #saved, 2 do
  local at = string.match(saved[i], '^[^|]*')
  if string.match(at, '^%d+-%d+$') then
    if not first or older(at, first.at) then
      second = first
      first = {member = saved[i], at = at, score = saved[i + 1]}
    elseif not second or older(at, second.at) then
      second = {member = saved[i], at = at, score = saved[i + 1]}
    end
  else
    redis.call('ZREM', KEYS[4], saved[i])
  end
end
local points = {}
if first then
  points[1] = first.at
  redis.call('ZREM', KEYS[4], first.member)
  if second and math.abs(tonumber(second.score) - tonumber(first.score)) <= TOGETHER_MS then
    redis.call('ZREM', KEYS[4], second.member)
    local tag = string.match(second.member, '|(.*)$') or ''
    redis.call('ZADD', KEYS[4], second.score, first.at .. '|' .. tag)
  end
end
local leases = redis.call('HGETALL', KEYS[5])
for i = 1, #leases, 2 do
  if leases[i] ~= ARGV[2] then
    local at, count = string.match(leases[i + 1], '^([^|]*)|?(%d*)$')
    if at then
      points[#points + 1] = at
      count = tonumber(count) or 1
      if count > 1 then
        redis.call('HSET', KEYS[5], leases[i], at .. '|' .. (count - 1))
      else
        redis.call('HDEL', KEYS[5], leases[i])
      end
    end
  end
end
return {position, points}
"""
).replace("TOGETHER_MS", str(int(TOGETHER_SECONDS * 1000)))

# KEYS: resume-point sets (one per user and role). ARGV: the window in ms, then one member
# "POSITION|TAG" per key. Each set keeps its newest MAX_RESUME_POINTS.
SAVE_RESUME = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[i + 1])
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -(MAX_RESUME_POINTS + 1))
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
""".replace("MAX_RESUME_POINTS", str(MAX_RESUME_POINTS))

# KEYS: lease hashes (one per user and role). ARGV: the window in ms, this process's field, '1' to
# add to the lease already there (its older position kept, the counts summed), then per key an
# event id and a count of connections.
SAVE_LEASES = (
    OLDER
    + """
for i = 1, #KEYS do
  local position, count = ARGV[2 * i + 2], tonumber(ARGV[2 * i + 3])
  local current = ARGV[3] == '1' and redis.call('HGET', KEYS[i], ARGV[2])
  if current then
    local at, had = string.match(current, '^([^|]*)|?(%d*)$')
    if at and older(at, position) then position = at end
    count = count + (tonumber(had) or 1)
  end
  redis.call('HSET', KEYS[i], ARGV[2], position .. '|' .. count)
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
"""
)

DROP_LEASES = """
for i = 1, #KEYS do redis.call('HDEL', KEYS[i], ARGV[1]) end
"""
SAVE_CHUNK = 1000  # resume points per script call: Redis is never blocked long by one

# A replay's first page, in one call (KEYS: stream, floor, added; ARGV: "(ID" exclusive, page):
# the floor, the count of entries ever added, the stream's length, its first and newest entries,
# and up to a page of entries after the id.
HISTORY = """
local floor = redis.call('GET', KEYS[2])
local added = redis.call('GET', KEYS[3])
local length = redis.call('XLEN', KEYS[1])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
return {floor, added, length, first, newest, entries}
"""

# The next page (KEYS: stream; ARGV: "(ID", page): the stream's first entry, then the page.
HISTORY_PAGE = """
return {redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1),
        redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
"""

SHA = {
    script: hashlib.sha1(script.encode()).hexdigest()
    for script in (
        PUBLISH,
        COMMAND,
        POSITION,
        START_POSITION,
        SAVE_RESUME,
        SAVE_LEASES,
        DROP_LEASES,
        HISTORY,
        HISTORY_PAGE,
    )
}
