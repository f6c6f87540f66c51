"""The Lua scripts through which every janitor write goes, so each re-checks its job atomically.

Each script takes the leader lease as its first key and the lease token as its first
argument and returns -1 without writing when the token no longer matches: the fencing
check runs inside the same atomic step as the writes. An empty token means the caller
writes without a lease (library use and tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from janitor.jobs import TERMINAL_STATUSES

FENCED_OUT = -1
"""What a script returns when the lease token no longer matches."""

Arg = bytes | str | int | float
"""One argument of a script call."""


def _slot(table: str, base: str, index: int) -> str:
    if base.isdigit():
        return f"{table}[{int(base) + index}]"
    return f"{table}[{base}]" if index == 0 else f"{table}[{base} + {index}]"


@dataclass(frozen=True, slots=True)
class Slots:
    """The KEYS and ARGV slots of one part of a script's call (its head, or one item of a batch), by name.

    The one description of the layout: the script binds the names as locals at the
    part's offsets (``bind``, generated into the script's text), and the Python that
    encodes a call puts its values in the same order by name (``encode``), so an offset
    cannot drift between the two. Counts and variable-length tails follow the named
    slots, as each script says.
    """

    keys: tuple[str, ...] = ()
    args: tuple[str, ...] = ()

    def bind(self, k: str = "k", a: str = "a") -> str:
        """Lua: ``local <names> = KEYS[k], KEYS[k + 1], ...`` and the same for ARGV at ``a``."""
        lines = []
        for names, table, base in ((self.keys, "KEYS", k), (self.args, "ARGV", a)):
            if names:
                values = ", ".join(_slot(table, base, i) for i in range(len(names)))
                lines.append(f"local {', '.join(names)} = {values}")
        return "\n".join(lines) + "\n"

    def advance(self) -> str:
        """Lua that moves ``k`` and ``a`` past this part's slots."""
        return f"k, a = k + {len(self.keys)}, a + {len(self.args)}\n"

    def encode(
        self, keys: Mapping[str, bytes], args: Mapping[str, Arg]
    ) -> tuple[list[bytes], list[Arg]]:
        """The values of ``keys`` and ``args``, by name, in this layout's order.

        Raises:
            ValueError: a name is missing or not in the layout.
        """
        if set(keys) != set(self.keys) or set(args) != set(self.args):
            msg = f"slots {self.keys} / {self.args} got {sorted(keys)} / {sorted(args)}"
            raise ValueError(msg)
        return [keys[n] for n in self.keys], [args[n] for n in self.args]


def present(value: bytes | None) -> bytes:
    """A field as the re-checking scripts compare it: ``+<value>``, or empty when absent."""
    return b"" if value is None else b"+" + value


BATCH_HEAD = Slots(keys=("lease",), args=("token", "count"))
"""The head of a batch write script's call: the lease and its token, the number of writes."""
BATCH_HEAD_NOW = Slots(keys=("lease",), args=("token", "now", "count"))
"""The same, for scripts that take the time."""


def batch_loop(head: Slots, item: Slots, prelude: str = "") -> str:
    """Lua that binds a batch call's ``head``, runs ``prelude``, and opens the loop over its items.

    Inside the loop ``j`` counts the items, ``item``'s names are bound at the offsets
    ``k`` (KEYS) and ``a`` (ARGV), and ``out`` collects one reply per item; the script
    moves ``k`` and ``a`` on (``advance`` when the item has no variable tail).
    """
    return (
        head.bind(k="1", a="1")
        + prelude
        + f"local k, a, out = {1 + len(head.keys)}, {1 + len(head.args)}, {{}}\n"
        + "for j = 1, tonumber(count) do\n"
        + item.bind()
    )


_FENCE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
"""

MEMO_TTL_S = 120
"""How long a batch's replies are kept, so a retried call returns them instead of re-running."""


def memoized(source: str) -> str:
    """Wrap a script so that its reply is remembered under its last key, which the caller adds.

    A connection cut after Redis ran a batch but before the reply arrived makes redis-py
    retry the same call; the retry then returns the first run's reply instead of running
    the re-checks again (which would now fail for the jobs already deleted, and so lose
    their audit lines). The memo key is removed from KEYS before the script body runs.
    """
    return f"""
local memo_key = KEYS[#KEYS]
KEYS[#KEYS] = nil
local memo = redis.call('GET', memo_key)
if memo then return cjson.decode(memo) end
local function body()
{source}
end
local reply = body()
if type(reply) == 'table' then
  redis.call('SET', memo_key, cjson.encode(reply), 'EX', {MEMO_TTL_S})
end
return reply
"""


_GUARDS = """
-- A read that must not abort the batch: a key of the wrong type (garbage under an RQ
-- name) makes only its own job ineligible. Returns the reply (false for nil) and ok.
local function read(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then return false, false end
  return reply, true
end
-- Whether a key is absent or of the given type, so that a write to it cannot fail
-- half-way through a batch.
local function writable(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == kind
end
"""

_TERMINAL_TABLE = (
    "local terminal = {" + ", ".join(f"{s} = true" for s in TERMINAL_STATUSES) + "}\n"
)
"""Lua: the terminal statuses (``jobs.TERMINAL_STATUSES``) as a set."""

WORKER_STILL_DEAD = """
-- liveness.py's rule, re-checked: the worker is still provably dead for the reason the
-- plan found. reason 'hash_expired': its hash is still gone; 'zombie': still a hash
-- without TTL, with the same last_heartbeat (time only makes it older). Either way
-- nobody subscribes to its command channel and none of its RQ 3 executions is live
-- (an execution key is execution_head followed by a member of the executions set).
local function worker_still_dead(worker, reason, heartbeat, channel, executions, execution_head)
  if reason == 'hash_expired' then
    if redis.call('EXISTS', worker) == 1 then return false end
  elseif reason == 'zombie' then
    if redis.call('TYPE', worker).ok ~= 'hash' or redis.call('TTL', worker) ~= -1
      or (redis.call('HGET', worker, 'last_heartbeat') or '') ~= heartbeat then return false end
  else
    return false
  end
  if redis.call('PUBSUB', 'NUMSUB', channel)[2] ~= 0 then return false end
  local kind = redis.call('TYPE', executions).ok
  if kind == 'set' then
    for _, member in ipairs(redis.call('SMEMBERS', executions)) do
      if redis.call('EXISTS', execution_head .. member) == 1 then return false end
    end
  elseif kind ~= 'none' then
    return false
  end
  return true
end
"""

DELETE_JOB = Slots(
    keys=("job", "registry", "started", "dependents", "group"),
    args=(
        "nside",
        "nexec",
        "nmembers",
        "id",
        "statuses",
        "origin",
        "ended_at",
        "score",
        "ndeps",
        "has_group",
        "check_children",
    ),
)
"""One job of ``DELETE_TERMINAL_JOBS``: its job hash, registry, started registry,
dependents set and group set (the job hash again when it has no group); the numbers of
side keys, execution hashes and started-registry members that follow, its id, the
statuses it may have (``|failed|stopped|``), origin, ended_at, registry score, number
of dependents, whether it has a group (``1``/``0``), and whether a dependent that is not
terminal (a member of its dependents set, its hash beside the job's) keeps it (``1``/``0``)."""

DELETE_TERMINAL_JOBS = (
    _FENCE
    + _GUARDS
    + _TERMINAL_TABLE
    + """
-- Deletes a batch of terminal jobs with everything that belongs to them, each only if
-- it is still exactly as the janitor saw it when it planned the delete.
-- Slots: BATCH_HEAD_NOW, then per job DELETE_JOB followed by its side keys (nside) and
-- execution hashes (nexec) in KEYS and its started-registry members (nmembers) in ARGV.
"""
    + batch_loop(BATCH_HEAD_NOW, DELETE_JOB, prelude="now = tonumber(now)\n")
    + f"""
  nside, nexec, nmembers, ndeps = tonumber(nside), tonumber(nexec), tonumber(nmembers), tonumber(ndeps)
  local side0 = k + {len(DELETE_JOB.keys)}
  local exec0, member0 = side0 + nside, a + {len(DELETE_JOB.args)}
"""
    + """
  local ok = 1
  local h, read_h = read('HMGET', job, 'status', 'origin', 'ended_at')
  local current, read_z = read('ZSCORE', registry, id)
  local deps, read_d = read('SCARD', dependents)
  if not (read_h and read_z and read_d) then ok = 0
  elseif not h[1] or not string.find(statuses, '|' .. h[1] .. '|', 1, true) then ok = 0
  elseif h[2] ~= origin or (h[3] or '') ~= ended_at then ok = 0
  elseif current ~= score or deps ~= ndeps then ok = 0
  elseif has_group == '1' and not writable(group, 'set') then ok = 0
  elseif check_children == '1' and deps > 0 then
    -- a child's hash is the job's with the child's id: RQ's job keys end with the id
    local head = string.sub(job, 1, #job - #id)
    for _, child in ipairs(redis.call('SMEMBERS', dependents)) do
      local status, fine = read('HGET', head .. child, 'status')
      if not fine or (status and not terminal[status]) then ok = 0 end
    end
  end
  local stale = {}
  if ok == 1 then
    for m = member0, member0 + nmembers - 1 do
      local s, read_s = read('ZSCORE', started, ARGV[m])
      if not read_s or (s and (tonumber(s) == nil or tonumber(s) > now)) then ok = 0
      elseif s then stale[#stale + 1] = ARGV[m] end
    end
    for x = exec0, exec0 + nexec - 1 do
      if redis.call('EXISTS', KEYS[x]) == 1 then ok = 0 end
    end
  end
  if ok == 1 then
    -- Only the members found (all stale) are removed, and the job's keys go in one call.
    redis.call('ZREM', registry, id)
    if #stale > 0 then redis.call('ZREM', started, unpack(stale)) end
    redis.call('UNLINK', job, dependents, unpack(KEYS, side0, side0 + nside - 1))
    if has_group == '1' then redis.call('SREM', group, id) end
  end
  out[j] = ok
  k = exec0 + nexec
  a = member0 + nmembers
end
return out
"""
)


_RQ_TIME = """
-- Whether a value is RQ's utcformat ('2026-10-20T06:48:14.418003Z', 27 characters) of a
-- real moment from 1970 to 2200: strict on purpose, so that only values Python's
-- strptime reads the same way take the fast path. Such values compare as strings in
-- the order of time (fixed width, zero-padded), so the scripts compare them with cutoffs
-- written the same way, and need no arithmetic. (Redis may collate strings by its
-- locale, which at worst ignores the punctuation: it sits at the same places in both.)
local MONTH_DAYS = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
local function rq_time_ok(t)
  if not t or #t ~= 27 or not string.find(t, '^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%dZ$') then
    return false
  end
  if t < '1970' or t >= '2201' then return false end
  -- the digits are read as bytes ('0' is 48): captures and tonumber cost twice as much
  local m1, m2, _, d1, d2, _, h1, h2, _, i1, i2, _, s1, s2 = string.byte(t, 6, 19)
  local mo, d = m1 * 10 + m2 - 528, d1 * 10 + d2 - 528
  if mo < 1 or mo > 12 or d < 1 or h1 * 10 + h2 > 551 or i1 * 10 + i2 > 587 or s1 * 10 + s2 > 587 then
    return false
  end
  local last = MONTH_DAYS[mo]
  if mo == 2 and d == 29 then
    local y = tonumber(string.sub(t, 1, 4))
    if y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then last = 29 end
  end
  return d <= last
end
"""


TEMPLATE_NAMES = ("jh", "jt", "dh", "dt", "ph", "pt", "rh", "rt", "eh", "et")
"""The text before (``h``) and after (``t``) the job id in a job's keys: job hash,
dependents, dependencies (``p``: parents), results, executions."""
EXPIRE_HEAD = Slots(
    keys=("lease",),
    args=("token", "apply", "budget", *TEMPLATE_NAMES, "nreg", "nprot"),
)
"""``EXPIRE_TERMINAL_JOBS``' call head: the lease, its token, ``1`` to delete (``0``
only judges: a dry run), the budget (entries to walk at most, overrun by at most one
small registry), the key templates, the number of registries, and the number of ids of
parents a live job depends on (``dependencies.read_waiting``) that follow in ARGV."""
EXPIRE_REGISTRY = Slots(
    keys=("registry", "started"), args=("origin", "cursor", "nstates")
)
"""One registry of ``EXPIRE_TERMINAL_JOBS``: it and its queue's started registry; the
queue name, the cursor to go on from (``0`` to start) and the number of statuses that
follow (each ``EXPIRE_STATUS``)."""
EXPIRE_STATUS = Slots(args=("status", "cutoff", "capped"))
"""One status of a registry: the status, its cutoff (``expiry.cutoff_text``: an ended_at at
or before it is past the age rule, exactly as ``expiry.past_age`` decides), and ``1``
when a keep_last cap applies to it."""

EXPIRE_TERMINAL_JOBS = (
    _FENCE
    + _GUARDS
    + _RQ_TIME
    + """
-- The fast path of expire_jobs: walks registries itself, in their order, and judges each
-- entry by the retention and, in the same atomic step, deletes each job that is plainly
-- past its age rule: its status one of its registry's, its origin the registry's queue,
-- a well-formed ended_at at or before the cutoff of its status, no group, no RQ 3 rate
-- limit (its slot may need freeing), no execution,
-- no member in the started registry, no dependents set, not a parent a live job depends
-- on (the ids after the head), and no side key of the wrong type. Everything else is left untouched; what is not plainly young (or
-- gone) is answered back to be planned the ordinary way (read, plan,
-- DELETE_TERMINAL_JOBS with its re-checks), so both paths end the same way.
-- The job's keys are built here from their templates (head and tail around the id)
-- instead of passed in KEYS: an RQ keyspace lives in one database, never in a cluster.
-- A walk goes by rank (deleting from the front of a sorted set is cheap, and ZRANGE
-- cheaper than ZSCAN); its cursor is the rank to go on from and the last entry it kept,
-- whose rank is looked up again, so entries that others add or remove meanwhile shift
-- nothing. (Only if that entry left too, entries before the cursor that left may make
-- the walk pass over as many: the next run gets them.) Every page answers each
-- registry's next cursor, and the next page starts from it, in a real and a dry run
-- alike: the same code, a dry run only does not write.
-- Slots: EXPIRE_HEAD, then in ARGV the nprot protected parent ids, then per registry
--   EXPIRE_REGISTRY followed by its statuses' EXPIRE_STATUS; then in KEYS the memo keys of answered pages, which no retry can need
--   any more: deleted here, instead of in a command of their own.
-- Returns {cursors, found, slow}: per registry its next cursor ('0' done, '-' not reached
--   within the budget, 'x' not a sorted set, then nothing after it is walked either, or
--   its started registry is not one: plan it the ordinary way); per registry one string of what was deleted (in a dry run: would
--   be), per job a letter for its status ('a' = the registry's first), its 27-character
--   ended_at, the id's length, ':' and the id; slow: registry index, id and score of
--   each entry to plan the ordinary way.
"""
    + EXPIRE_HEAD.bind(k="1", a="1")
    + f"""
apply, budget, nreg = apply == '1', tonumber(budget), tonumber(nreg)
local k, a, judged, stopped = {1 + len(EXPIRE_HEAD.keys)}, {1 + len(EXPIRE_HEAD.args)}, 0, false
local protected = {{}}
for i = a, a + tonumber(nprot) - 1 do protected[ARGV[i]] = true end
a = a + tonumber(nprot)
local memos0 = k + {len(EXPIRE_REGISTRY.keys)} * nreg
if apply and #KEYS >= memos0 then redis.call('UNLINK', unpack(KEYS, memos0, #KEYS)) end
"""
    + """
local cursors, found, slow, ns = {}, {}, {}, 0
-- A job's dependents and execution registry: whether both read, and their sizes.
local function side(dependents, executions)
  if redis.call('EXISTS', dependents, executions) == 0 then return true, 0, 0 end
  local deps, read_d = read('SCARD', dependents)
  local execs, read_e = read('ZCARD', executions)
  return read_d and read_e, deps, execs
end
-- Judges (and deletes) entries of registry r; appends to out what it deleted and
-- returns out's new length, how many entries it kept, and the last one kept.
local function judge(r, registry, started, origin, states, members, items, out, n)
  -- Dependents, dependencies and execution registries are rare on terminal jobs: when
  -- none of this page's jobs has one, one EXISTS answers for all of them.
  local plain = false
  local sides = {}
  for i = 1, #items do
    local id = items[i]
    sides[#sides + 1] = dh .. id .. dt
    sides[#sides + 1] = ph .. id .. pt
    sides[#sides + 1] = eh .. id .. et
  end
  for i = 1, #sides, 1000 do
    if redis.call('EXISTS', unpack(sides, i, math.min(i + 999, #sides))) > 0 then break end
    plain = i + 1000 > #sides
  end
  local ids, ni, doomed, nd, kept, last = {}, 0, {}, 0, 0, nil
  for i = 1, #items do
    local id = items[i]
    local job = jh .. id .. jt
    local code = '?'
    local h = redis.pcall('HMGET', job, 'status', 'origin', 'ended_at', 'group_id', 'rate_limit_key')
    if not h.err then
      if not h[1] then
        if redis.call('EXISTS', job, dh .. id .. dt, eh .. id .. et) == 0 then code = '-' end
      else
        local state, ended = states[h[1]], h[3]
        if state and h[2] == origin and rq_time_ok(ended) then
          local readable, deps, execs = true, 0, 0
          if not plain then readable, deps, execs = side(dh .. id .. dt, eh .. id .. et) end
          if not readable then code = '?'
          elseif ended > state[2] then
            -- younger: kept, unless a cap applies (the planner places it)
            if not state[3] then code = '-' end
          elseif (not h[4] or h[4] == '') and (not h[5] or h[5] == '') and execs == 0
              and deps == 0 and not protected[id] then
            local running
            if members then running = members[id]
            else
              local s, read_s = read('ZSCORE', started, id)
              running = s or not read_s
            end
            if not running then
              code = '+'
              n = n + 5
              out[n - 4], out[n - 3], out[n - 2], out[n - 1], out[n] = state[1], h[3], #id, ':', id
              ni = ni + 1
              ids[ni] = id
              doomed[nd + 1], doomed[nd + 2] = job, rh .. id .. rt
              nd = nd + 2
              if not plain then
                nd = nd + 1
                doomed[nd] = ph .. id .. pt
              end
            end
          end
        end
      end
    end
    if code == '?' then
      -- the score only for these (rare): the ordinary plan needs it, and a reply of
      -- scores for every entry would cost more than this
      slow[ns + 1], slow[ns + 2], slow[ns + 3] = r, id, redis.call('ZSCORE', registry, id)
      ns = ns + 3
    end
    if code ~= '+' or not apply then
      kept, last = kept + 1, id
    end
  end
  if apply then
    for i = 1, ni, 1000 do
      redis.call('ZREM', registry, unpack(ids, i, math.min(i + 999, ni)))
    end
    for i = 1, nd, 1000 do
      redis.call('UNLINK', unpack(doomed, i, math.min(i + 999, nd)))
    end
  end
  return n, kept, last
end
for r = 1, nreg do
"""
    + EXPIRE_REGISTRY.bind()
    + f"""
  nstates = tonumber(nstates)
  k, a = k + {len(EXPIRE_REGISTRY.keys)}, a + {len(EXPIRE_REGISTRY.args)}
  local states = {{}}
  for s = 1, nstates do
"""
    + EXPIRE_STATUS.bind()
    + f"""
    states[status] = {{string.char(96 + s), cutoff, capped == '1'}}
    a = a + {len(EXPIRE_STATUS.args)}
  end
"""
    + """
  found[r] = ''
  if judged >= budget or stopped then
    cursors[r] = '-'
  elseif not writable(registry, 'zset') then
    -- the ordinary plan fails the task here, before the registries after it: so does this
    cursors[r], stopped = 'x', true
  elseif not writable(started, 'zset') then
    cursors[r] = 'x'
  else
    -- A started registry holds the running jobs: usually few, read once into a table.
    local members
    if redis.call('ZCARD', started) <= 1000 then
      members = {}
      for _, m in ipairs(redis.call('ZRANGE', started, 0, -1)) do members[m] = true end
    end
    local out, n, start, anchor, done = {}, 0, 0, nil, false
    if cursor ~= '0' then
      local space = string.find(cursor, ' ', 1, true)
      start, anchor = tonumber(string.sub(cursor, 1, space - 1)), string.sub(cursor, space + 1)
      local rank = anchor ~= '' and redis.call('ZRANK', registry, anchor)
      if rank then start = rank + 1 end
    end
    repeat
      local want = math.max(1, budget - judged)
      local items = redis.call('ZRANGE', registry, start, start + want - 1)
      local got = #items
      local kept, last
      judged = judged + got
      n, kept, last = judge(r, registry, started, origin, states, members, items, out, n)
      start, anchor = start + kept, last or anchor
      done = got < want
    until done or judged >= budget
    cursors[r] = done and '0' or (start .. ' ' .. (anchor or ''))
    found[r] = table.concat(out)
  end
end
return {cursors, found, slow}
"""
)

RECOVER_JOB = Slots(
    keys=(
        "job",
        "started",
        "worker",
        "execution",
        "executions",
        "worker_execs",
        "suspects",
        "failed",
        "queue",
        "queues",
        "scheduled",
        "dependents",
        "dependencies",
        "results",
    ),
    args=(
        "member",
        "id",
        "exec_id",
        "score",
        "worker_state",
        "heartbeat",
        "fingerprint",
        "mode",
        "ttl",
        "now_text",
        "at",
        "retries",
        "queue_key",
        "exc",
        "channel",
        "execution_head",
    ),
)
"""One job of ``RECOVER_ABANDONED_JOBS``. KEYS: the job hash, started registry, worker
hash, execution hash, execution registry, worker executions set, suspects hash, failed
registry, queue list, ``rq:queues``, scheduled registry, dependents, dependencies, result
stream. ARGV: the started-registry member, job id, execution id, score, the worker's dead
reason (``hash_expired`` or ``zombie``) and heartbeat, the suspect's fingerprint, mode
(``fail`` | ``enqueue`` | ``schedule``), failure ttl, now as RQ's utcformat, schedule-at
epoch, retries_left to write ('' = leave), the queue key for ``rq:queues``, the failure
result's exc_string ('' = write none), the worker's command channel, the execution head."""

RECOVER_ABANDONED_JOBS = (
    _FENCE
    + _GUARDS
    + WORKER_STILL_DEAD
    + """
-- Recovers a batch of started jobs whose worker is provably dead, each only if every piece
-- of evidence still holds: status started, the same started-registry score (no heartbeat
-- since) and already past, the worker still dead for the same reason (worker_still_dead),
-- no live execution hash of the job, and the suspect recorded by the previous pass unchanged.
-- Slots: BATCH_HEAD_NOW, then RECOVER_JOB per job.
"""
    + batch_loop(BATCH_HEAD_NOW, RECOVER_JOB, prelude="now = tonumber(now)\n")
    + """
  ttl = tonumber(ttl)
  local ok = 1
  local current = read('ZSCORE', started, member)
  local status = read('HGET', job, 'status')
  local suspect = read('HGET', suspects, member)
  local targets = {{executions, 'zset'}, {worker_execs, 'set'}, {failed, 'zset'}, {results, 'stream'},
    {queue, 'list'}, {queues, 'set'}, {scheduled, 'zset'}}
  if status ~= 'started' or suspect ~= fingerprint then ok = 0
  elseif current ~= score or tonumber(current) == nil or tonumber(current) > now then ok = 0
  elseif exec_id ~= '' and redis.call('EXISTS', execution) == 1 then ok = 0
  elseif not worker_still_dead(worker, worker_state, heartbeat, channel, worker_execs, execution_head) then ok = 0
  end
  for _, target in ipairs(targets) do
    if ok == 1 and not writable(target[1], target[2]) then ok = 0 end
  end
  if ok == 1 then
    redis.call('ZREM', started, member)
    redis.call('HDEL', suspects, member)
    if exec_id ~= '' then
      redis.call('ZREM', executions, exec_id)
      redis.call('SREM', worker_execs, member)
    end
    if retries ~= '' then redis.call('HSET', job, 'retries_left', retries) end
    if mode == 'fail' then
      redis.call('HSET', job, 'status', 'failed')
      redis.call('ZADD', failed, ttl < 0 and -1 or now + ttl, id)
      if ttl > 0 then
        redis.call('EXPIRE', job, ttl)
        redis.call('EXPIRE', dependents, ttl)
        redis.call('EXPIRE', dependencies, ttl)
      elseif ttl == 0 then
        redis.call('UNLINK', job, dependents, dependencies)
      end
      if exc ~= '' and ttl ~= 0 then
        redis.call('XADD', results, 'MAXLEN', '~', '10', '*', 'type', '2', 'worker_name', '', 'exc_string', exc)
        if ttl > 0 then redis.call('EXPIRE', results, ttl) end
      end
    elseif mode == 'enqueue' then
      redis.call('HSET', job, 'status', 'queued', 'enqueued_at', now_text)
      redis.call('RPUSH', queue, id)
      redis.call('SADD', queues, queue_key)
    else
      redis.call('HSET', job, 'status', 'scheduled')
      redis.call('ZADD', scheduled, at, id)
      redis.call('SADD', queues, queue_key)
    end
  end
  out[j] = ok
"""
    + RECOVER_JOB.advance()
    + """
end
return out
"""
)

SUSPECTS_HEAD = Slots(keys=("lease", "suspects"), args=("token", "ttl"))
"""``RECORD_SUSPECTS``' call: the lease, the queue's suspects hash, the token, the TTL;
then (member, fingerprint) pairs in ARGV."""

RECORD_SUSPECTS = (
    _FENCE
    + """
-- Remembers started-registry members seen abandoned, for the next pass to confirm.
-- Slots: SUSPECTS_HEAD, then member, fingerprint pairs.
"""
    + SUSPECTS_HEAD.bind(k="1", a="1")
    + f"""
for i = {1 + len(SUSPECTS_HEAD.args)}, #ARGV, 2 do redis.call('HSET', suspects, ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', suspects, ttl)
return 1
"""
)

PRUNE_WORKER = Slots(
    keys=("worker", "executions"),
    args=("nsets", "reason", "heartbeat", "channel", "execution_head"),
)
"""One worker of ``PRUNE_WORKER_MEMBERSHIPS``: its hash key (also the set member) and
executions set; the number of its sets that follow in KEYS, its dead reason
(``hash_expired`` or ``zombie``), the last_heartbeat judged ('' when none), its command
channel and the execution head."""

PRUNE_WORKER_MEMBERSHIPS = (
    _FENCE
    + _GUARDS
    + WORKER_STILL_DEAD
    + """
-- Removes dead workers from worker sets, each only if it is still dead for the same
-- reason (worker_still_dead): a worker restarting under the same name re-creates its hash
-- and re-adds itself (register_birth); a zombie hash is deleted too.
-- Slots: BATCH_HEAD, then per worker PRUNE_WORKER followed by its sets in KEYS.
-- Returns per worker 1 when it was handled: removed from at least one set, or its
-- zombie hash deleted.
"""
    + batch_loop(BATCH_HEAD, PRUNE_WORKER)
    + f"""
  nsets = tonumber(nsets)
  local sets0 = k + {len(PRUNE_WORKER.keys)}
  local done = 0
  if worker_still_dead(worker, reason, heartbeat, channel, executions, execution_head) then
    if reason == 'zombie' then
      redis.call('UNLINK', worker)
      done = 1
    end
    for s = sets0, sets0 + nsets - 1 do
      if writable(KEYS[s], 'set') then done = done + redis.call('SREM', KEYS[s], worker) end
    end
  end
  out[j] = done > 0 and 1 or 0
  k, a = sets0 + nsets, a + {len(PRUNE_WORKER.args)}
end
return out
"""
)

QUEUES_HEAD = Slots(keys=("lease", "queues"), args=("token", "count"))
"""``PRUNE_EMPTY_QUEUES``' call head: the lease, ``rq:queues``, the token, the number of queues."""
PRUNE_QUEUE = Slots(keys=("state",), args=("member", "since", "nkeys"))
"""One queue of ``PRUNE_EMPTY_QUEUES``: its empty-since key; its ``rq:queues`` member,
the empty-since value the plan read, and the number of the queue's keys that follow."""

PRUNE_EMPTY_QUEUES = (
    _FENCE
    + _GUARDS
    + """
-- Removes queues from rq:queues, each only if the janitor's empty-since record is the one
-- the plan read and none of the queue's keys exists (Redis deletes empty lists, sets and
-- sorted sets, so EXISTS is the emptiness check). Drops the record with the member.
-- Slots: QUEUES_HEAD, then per queue PRUNE_QUEUE followed by the queue's keys.
"""
    + batch_loop(
        QUEUES_HEAD, PRUNE_QUEUE, prelude="local listed = writable(queues, 'set')\n"
    )
    + f"""
  nkeys = tonumber(nkeys)
  local keys0 = k + {len(PRUNE_QUEUE.keys)}
  local ok = 0
  if listed and read('GET', state) == since then
    local busy = 0
    for x = keys0, keys0 + nkeys - 1 do busy = busy + redis.call('EXISTS', KEYS[x]) end
    if busy == 0 then
      ok = redis.call('SREM', queues, member)
      redis.call('DEL', state)
    end
  end
  out[j] = ok
  k, a = keys0 + nkeys, a + {len(PRUNE_QUEUE.args)}
end
return out
"""
)

STATE_WRITE = Slots(keys=("key",), args=("mode", "value", "ttl", "score"))
"""One write of ``SET_JANITOR_STATE``: a state key (under ``janitor:``, checked by the
caller); mode (``set``, ``nx``, ``del``; ``zadd``/``zrem`` for a sorted set's member),
value (the member for ``zadd``/``zrem``), TTL in seconds, score (``zadd``)."""

SET_JANITOR_STATE = (
    _FENCE
    + """
-- Sets (with a TTL), sets-if-absent or deletes keys of the janitor's own state, or adds
-- (renewing the set's TTL) or removes one member of a sorted set of it.
-- Slots: BATCH_HEAD, then STATE_WRITE per key.
"""
    + batch_loop(BATCH_HEAD, STATE_WRITE)
    + STATE_WRITE.advance()
    + """
  local done
  if mode == 'del' then done = redis.call('DEL', key)
  elseif mode == 'nx' then done = redis.call('SET', key, value, 'EX', ttl, 'NX')
  elseif mode == 'zadd' then
    redis.call('ZADD', key, score, value)
    done = redis.call('EXPIRE', key, ttl)
  elseif mode == 'zrem' then done = redis.call('ZREM', key, value)
  else done = redis.call('SET', key, value, 'EX', ttl)
  end
  out[j] = done and done ~= 0 and 1 or 0
end
return out
"""
)

MARKER_WRITE = Slots(keys=("marker",), args=("op", "marker_token", "ttl"))
"""One marker of ``CLEANING_MARKER``: ``rq:clean_registries:<q>``; op (``take`` or
``give``), the run's marker token, TTL in seconds."""

CLEANING_MARKER = (
    _FENCE
    + """
-- Takes ('take': SET NX EX, so a TTL from birth) or gives back ('give': DEL only while
-- it holds this run's token) rq:clean_registries:<q> markers.
-- Slots: BATCH_HEAD, then MARKER_WRITE per marker.
"""
    + batch_loop(BATCH_HEAD, MARKER_WRITE)
    + MARKER_WRITE.advance()
    + """
  out[j] = 0
  if op == 'take' then
    if redis.call('SET', marker, marker_token, 'NX', 'EX', ttl) then out[j] = 1 end
  elseif redis.call('TYPE', marker)['ok'] == 'string' and redis.call('GET', marker) == marker_token then
    out[j] = redis.call('DEL', marker)
  end
end
return out
"""
)
"""Takes and gives back queue maintenance markers (``clean_registries``)."""


CLEAN_ENTRY = Slots(
    keys=("marker", "registry", "job", "prefix_job", "execution"),
    args=("op", "marker_token", "member", "score", "colon"),
)
"""One write of ``CLEAN_REGISTRY_ENTRIES``: the queue's marker, the registry, the
member's job hash, the job hash of the part before its last colon, that part's execution
hash; op, the run's marker token, member, score, colon (``1``/``0``)."""

CLEAN_REGISTRY_ENTRIES = (
    _FENCE
    + _GUARDS
    + _TERMINAL_TABLE
    + """
-- RQ's registry hygiene, only while the queue's marker holds this run's token (except
-- 'dangling'), each entry re-checked; returns per write the number of entries removed.
-- Slots: BATCH_HEAD, then CLEAN_ENTRY per write.
--   expire: ZREMRANGEBYSCORE registry 0 score, exactly as RQ's cleanup.
--   gone:   ZREM member if its score is unchanged and its job hash is still missing.
--   dangling: the same without the marker, for the canceled and deferred registries of a
--           served queue, which its worker never cleans (docs/keyspace.md, "Leaks RQ
--           leaves", item 14).
--   lrem:   LREM list 0 member (a queue or intermediate list) if its job hash is still
--           missing: every copy of that dead id goes, every other id keeps its place
--           (docs/keyspace.md, "Leaks RQ leaves", item 15).
--   wip:    ZREM a started member scored in [0, score] if no job hash exists under
--           either reading of it (1.x '<id>', 2.x '<id>:<exec>'), or its job is
--           terminal and (2.x) the execution hash is gone (docs/keyspace.md,
--           "Registry entries and side keys", item 2).
local function is_terminal(job)
  local status = read('HGET', job, 'status')
  return status and terminal[status] or false
end
local function stale(registry, member, cutoff, job, prefix_job, execution, colon)
  local score = tonumber(read('ZSCORE', registry, member) or '')
  if not score or score < 0 or score > cutoff then return false end
  if redis.call('EXISTS', job) == 1 then return is_terminal(job) end
  if colon ~= '1' or redis.call('EXISTS', prefix_job) == 0 then return true end
  return is_terminal(prefix_job) and redis.call('EXISTS', execution) == 0
end
"""
    + batch_loop(BATCH_HEAD, CLEAN_ENTRY)
    + CLEAN_ENTRY.advance()
    + """
  local done = 0
  local kind = op == 'lrem' and 'list' or 'zset'
  if (op == 'dangling' or read('GET', marker) == marker_token) and writable(registry, kind) then
    if op == 'expire' then
      done = redis.call('ZREMRANGEBYSCORE', registry, 0, score)
    elseif op == 'gone' or op == 'dangling' then
      if read('ZSCORE', registry, member) == score and redis.call('EXISTS', job) == 0 then
        done = redis.call('ZREM', registry, member)
      end
    elseif op == 'lrem' then
      if redis.call('EXISTS', job) == 0 then
        done = redis.call('LREM', registry, 0, member)
      end
    elseif stale(registry, member, tonumber(score), job, prefix_job, execution, colon) then
      done = redis.call('ZREM', registry, member)
    end
  end
  out[j] = done
end
return out
"""
)
"""Removes expired and dangling registry entries of a queue (``clean_registries``)."""

RATE_LIMIT_WRITE = Slots(
    keys=("allowed", "waiting", "job", "executions", "queue", "config", "rl_keys"),
    args=("op", "id", "timestamp", "enqueued_at", "origin", "key"),
)
"""One write of ``RATE_LIMIT_WRITES`` on one of RQ 3's rate limits: its allowed and
waiting (``rate_limited``) sets, the job hash and its executions, the job's queue list,
the limit's config hash, ``rq:rl-keys``; op, the job id, RQ's ``current_timestamp``, RQ's
``utcformat`` of now, the job's origin as planned, the limit's key."""

RATE_LIMIT_WRITES = (
    _FENCE
    + _GUARDS
    + """
-- RQ 3's rate-limit bookkeeping, the steps of its own scripts (rq/rate_limit.py), each
-- re-checked here. Returns per write 1 when done, 0 when left alone.
--   release: RELEASE_STALE_AND_ENQUEUE_SCRIPT's release: not while the job is queued or
--            started or has a live execution (a score past now in its executions set);
--            then ZREM it from allowed.
--   promote: one step of ACQUIRE_AND_ENQUEUE_SCRIPT's loop, for the planned (oldest)
--            waiting job: only while allowed holds fewer than the limit's concurrency and
--            the job is still waiting, 'rate_limited', of the planned origin; then ZREM it
--            from waiting, ZADD it to allowed, push it (LPUSH if enqueue_at_front), status
--            'queued', enqueued_at.
--   drop:    the loop's dropping of a stale waiting entry: job gone, without origin, or
--            no longer 'rate_limited'.
--   forget:  CLEANUP_REGISTRY_SCRIPT: when allowed and waiting are both empty, SREM the
--            key from rq:rl-keys and DEL the sets and the config hash.
-- Slots: BATCH_HEAD, then RATE_LIMIT_WRITE per write.
"""
    + batch_loop(BATCH_HEAD, RATE_LIMIT_WRITE)
    + RATE_LIMIT_WRITE.advance()
    + """
  local done = 0
  if not (writable(allowed, 'zset') and writable(waiting, 'zset') and writable(config, 'hash')
      and writable(rl_keys, 'set')) then
    done = 0
  elseif op == 'release' then
    local status = read('HGET', job, 'status')
    local live = read('ZCOUNT', executions, '(' .. timestamp, '+inf')
    if status ~= 'queued' and status ~= 'started' and live == 0 then
      done = redis.call('ZREM', allowed, id)
    end
  elseif op == 'promote' then
    local concurrency = tonumber(read('HGET', config, 'concurrency') or '') or 0
    local h, ok = read('HMGET', job, 'origin', 'status', 'enqueue_at_front')
    if ok and redis.call('ZCARD', allowed) < concurrency and redis.call('ZSCORE', waiting, id)
        and h[1] == origin and h[2] == 'rate_limited' and writable(queue, 'list') then
      redis.call('ZREM', waiting, id)
      redis.call('ZADD', allowed, timestamp, id)
      if h[3] == '1' then redis.call('LPUSH', queue, id) else redis.call('RPUSH', queue, id) end
      redis.call('HSET', job, 'status', 'queued', 'enqueued_at', enqueued_at)
      done = 1
    end
  elseif op == 'drop' then
    local h, ok = read('HMGET', job, 'origin', 'status')
    if ok and redis.call('ZSCORE', waiting, id) and not (h[1] and h[2] == 'rate_limited') then
      done = redis.call('ZREM', waiting, id)
    end
  elseif op == 'forget' then
    if redis.call('ZCARD', allowed) == 0 and redis.call('ZCARD', waiting) == 0 then
      redis.call('SREM', rl_keys, key)
      redis.call('DEL', allowed, waiting, config)
      done = 1
    end
  end
  out[j] = done
end
return out
"""
)
"""RQ 3's rate-limit bookkeeping for the janitor's jobs and leaked slots (``clean_registries``, ``recover_abandoned``)."""

_PARENTS_AS_PLANNED = """
-- Whether a deferred job's dependencies set holds exactly the planned parents, each with
-- its planned status ('+' .. status, '' when its hash is gone): the facts
-- janitor/dependencies.py judged at plan time. The n parents' job hashes are in KEYS from
-- keys0; their ids and planned statuses, in pairs, in ARGV from args0.
local function parents_as_planned(dependencies, keys0, args0, n)
  if redis.call('SCARD', dependencies) ~= n then return false end
  for p = 0, n - 1 do
    local key, parent, planned = KEYS[keys0 + p], ARGV[args0 + 2 * p], ARGV[args0 + 2 * p + 1]
    if redis.call('SISMEMBER', dependencies, parent) ~= 1 then return false end
    if redis.call('EXISTS', key) == 1 and redis.call('TYPE', key)['ok'] ~= 'hash' then return false end
    local status = redis.call('HGET', key, 'status')
    if (status and ('+' .. status) or '') ~= planned then return false end
  end
  return true
end
-- A hash field as the plans pass it: '+' .. value, '' when absent.
local function field(key, name)
  local value = redis.call('HGET', key, name)
  return value and ('+' .. value) or ''
end
"""


def batch_loop_with_parents(head: Slots, item: Slots) -> str:
    """``batch_loop`` for items each followed by ``nparents`` parents (``DeferredWrite``'s layout).

    Also binds where the item's parents start: ``parents0`` in KEYS (a job hash each) and
    ``pargs0`` in ARGV (an id and a planned status each), as ``parents_as_planned`` takes
    them. The loop body ends with ``_PAST_PARENTS``, which moves ``k`` and ``a`` past them.
    """
    return batch_loop(head, item) + (
        "\n  nparents = tonumber(nparents)\n"
        f"  local parents0, pargs0 = k + {len(item.keys)}, a + {len(item.args)}\n"
    )


_PAST_PARENTS = """  k = parents0 + nparents
  a = pargs0 + 2 * nparents
"""
"""Lua that ends a ``batch_loop_with_parents`` body: the next item starts past this one's parents."""


STUCK_JOB = Slots(
    keys=("job", "dependencies", "deferred", "queue", "canceled"),
    args=("id", "allow", "score", "nparents"),
)
"""One job of ``CANCEL_STUCK_JOBS``: its job hash, dependencies set, deferred registry,
queue list and canceled registry; its id, ``allow_dependency_failures`` as planned, the
canceled registry's score (now, whole seconds, as RQ's ``current_timestamp``), the number
of parents whose job hashes (KEYS) and ids and planned statuses (ARGV) follow."""

CANCEL_STUCK_JOBS = (
    _FENCE
    + _GUARDS
    + _PARENTS_AS_PLANNED
    + """
-- Cancels deferred jobs that can never run as RQ's Job.cancel() does (status 'canceled',
-- out of its queue list and deferred registry, into the canceled registry scored now;
-- its parents' dependents sets are left, as remove_from_dependencies=False leaves them),
-- each only if it is still 'deferred' with the planned allow_dependency_failures and
-- parents (parents_as_planned). Returns per job 1 when canceled, 0 when left alone.
-- Slots: BATCH_HEAD, then per job STUCK_JOB followed by its parents' job hashes (KEYS)
-- and, per parent, its id and planned status (ARGV).
"""
    + batch_loop_with_parents(BATCH_HEAD, STUCK_JOB)
    + """
  local done = 0
  if writable(dependencies, 'set') and writable(deferred, 'zset') and writable(queue, 'list')
      and writable(canceled, 'zset') and redis.call('TYPE', job)['ok'] == 'hash'
      and redis.call('HGET', job, 'status') == 'deferred'
      and field(job, 'allow_dependency_failures') == allow
      and parents_as_planned(dependencies, parents0, pargs0, nparents) then
    redis.call('HSET', job, 'status', 'canceled')
    redis.call('LREM', queue, 1, id)
    redis.call('ZREM', deferred, id)
    redis.call('ZADD', canceled, score, id)
    done = 1
  end
  out[j] = done
"""
    + _PAST_PARENTS
    + """end
return out
"""
)
"""Cancels deferred jobs that can never run (``clean_registries`` with ``[deferred] stuck = "cancel"``)."""

DEPENDENT = Slots(
    keys=("trigger", "job", "dependencies", "deferred", "queue", "dependents"),
    args=("id", "origin", "allow", "enqueued_at", "default_timeout", "nparents"),
)
"""One job of ``ENQUEUE_DEPENDENTS``: the dependents set of the parent whose end enqueues
it, its job hash, dependencies set, deferred registry, queue list and its own dependents
set; its id, origin, ``allow_dependency_failures`` as planned (``+`` and the value, ''
if absent), RQ's ``utcformat`` of now, RQ's default timeout, the number of parents whose
job hashes (KEYS) and ids and planned statuses (ARGV) follow."""

ENQUEUE_DEPENDENTS = (
    _FENCE
    + _GUARDS
    + _PARENTS_AS_PLANNED
    + """
-- Enqueues deferred jobs whose parents ended the way they accept (janitor/dependencies.py
-- decided that at plan time), as RQ's Queue.enqueue_dependents does, each only if every
-- fact the plan decided on still holds: the job is still a member of the trigger
-- parent's dependents set, still 'deferred' of this origin, not rate-limited, with the
-- same allow_dependency_failures; its dependencies set holds exactly the planned parents,
-- each with the planned status ('+' .. status, '' when the hash is gone). Then: SREM it
-- from the trigger's dependents (Redis drops the set when it empties, as RQ DELs it),
-- ZREM it from the deferred registry, status 'queued', enqueued_at, the default timeout
-- if it has none, EXPIRE its keys if it has a ttl, LPUSH if enqueue_at_front else RPUSH.
-- Returns per job 1 when enqueued, 0 when left alone.
-- Slots: BATCH_HEAD, then per job DEPENDENT followed by its parents' job hashes (KEYS)
-- and, per parent, its id and planned status (ARGV).
"""
    + batch_loop_with_parents(BATCH_HEAD, DEPENDENT)
    + """
  local ok = writable(trigger, 'set') and writable(dependencies, 'set')
    and writable(deferred, 'zset') and writable(queue, 'list')
    and redis.call('TYPE', job)['ok'] == 'hash'
  if ok then
    local h = redis.call('HMGET', job, 'status', 'origin', 'rate_limit_key')
    ok = h[1] == 'deferred' and h[2] == origin and (not h[3] or h[3] == '')
      and redis.call('SISMEMBER', trigger, id) == 1
      and field(job, 'allow_dependency_failures') == allow
      and parents_as_planned(dependencies, parents0, pargs0, nparents)
  end
  local done = 0
  if ok then
    redis.call('SREM', trigger, id)
    redis.call('ZREM', deferred, id)
    redis.call('HSET', job, 'status', 'queued', 'enqueued_at', enqueued_at)
    local extra = redis.call('HMGET', job, 'timeout', 'ttl', 'enqueue_at_front')
    if not extra[1] or extra[1] == '' then redis.call('HSET', job, 'timeout', default_timeout) end
    local seconds = tonumber(extra[2] or '')
    if seconds and seconds > 0 then
      redis.call('EXPIRE', job, math.floor(seconds))
      redis.call('EXPIRE', dependents, math.floor(seconds))
      redis.call('EXPIRE', dependencies, math.floor(seconds))
    end
    if extra[3] == '1' then redis.call('LPUSH', queue, id) else redis.call('RPUSH', queue, id) end
    done = 1
  end
  out[j] = done
"""
    + _PAST_PARENTS
    + """end
return out
"""
)
"""Enqueues the dependents of a job the janitor failed (``recover_abandoned``)."""

READY_ENTRY = Slots(
    keys=("ready", "job", "queue", "dependents", "dependencies"),
    args=("op", "id", "origin", "score", "enqueued_at", "default_timeout"),
)
"""One entry of ``ENQUEUE_READY_JOBS``: RQ 3's ready registry, the job hash, the queue
list, the job's dependents and dependencies sets; op (``enqueue`` or ``stale``), the id,
the queue's name, the score the plan read, RQ's ``utcformat`` of now, and RQ's default
job timeout (180 s) for a job that has none."""

ENQUEUE_READY_JOBS = (
    _FENCE
    + _GUARDS
    + """
-- What RQ 3's ReadyJobRegistry.enqueue_jobs does for one entry, re-checked atomically:
-- the entry must still have the score the plan read (else someone enqueued it).
--   enqueue: the job is still 'ready_to_enqueue', of this queue, not rate-limited: ZREM
--            the entry, status 'queued', enqueued_at, timeout if it had none, EXPIRE
--            its keys if it has a ttl (Job.cleanup), LPUSH when it should go to the
--            front (enqueue_at_front, or enqueue_at_front_on_retry after a run), else
--            RPUSH: Queue._enqueue_job. Like RQ, rq:queues is not touched.
--   stale:   the job hash is gone or its status is no longer 'ready_to_enqueue': ZREM
--            the entry, as RQ drops stale entries.
-- Returns per entry 1 when done, 0 when it left the entry alone.
-- Slots: BATCH_HEAD, then READY_ENTRY per entry.
"""
    + batch_loop(BATCH_HEAD, READY_ENTRY)
    + READY_ENTRY.advance()
    + """
  local done = 0
  if writable(ready, 'zset') and read('ZSCORE', ready, id) == score then
    local h, ok = read('HMGET', job, 'status', 'origin', 'rate_limit_key', 'enqueue_at_front',
      'enqueue_at_front_on_retry', 'ended_at', 'ttl', 'timeout')
    if ok then
      local status, from, limit, front, front_retry, ended, ttl, timeout =
        h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
      if op == 'stale' and status ~= 'ready_to_enqueue' then
        done = redis.call('ZREM', ready, id)
      elseif op == 'enqueue' and status == 'ready_to_enqueue' and from == origin
          and (not limit or limit == '') and writable(queue, 'list') then
        redis.call('ZREM', ready, id)
        redis.call('HSET', job, 'status', 'queued', 'enqueued_at', enqueued_at)
        if not timeout or timeout == '' then redis.call('HSET', job, 'timeout', default_timeout) end
        local seconds = tonumber(ttl or '')
        if seconds and seconds > 0 then
          redis.call('EXPIRE', job, math.floor(seconds))
          redis.call('EXPIRE', dependents, math.floor(seconds))
          redis.call('EXPIRE', dependencies, math.floor(seconds))
        end
        if (front_retry == '1' and ended and ended ~= '') or front == '1' then
          redis.call('LPUSH', queue, id)
        else
          redis.call('RPUSH', queue, id)
        end
        done = 1
      end
    end
  end
  out[j] = done
end
return out
"""
)
"""Enqueues ready jobs or drops stale ready entries (``clean_registries``, RQ 3 data)."""

INDEX_ENTRY = Slots(keys=("index", "owner"), args=("op", "member", "score"))
"""One entry of ``CLEAN_INDEX_ENTRIES``: the index (``rq:groups`` or
``rq:cron_schedulers``) and the key whose absence makes the entry dead; op (``group`` or
``cron``), the member, the score the plan read (``cron``)."""

CLEAN_INDEX_ENTRIES = (
    _FENCE
    + _GUARDS
    + """
-- Removes index entries of things that are gone, each re-checked: 'group' SREMs a member
-- of rq:groups while its group set rq:group:<name> is still missing (what RQ's
-- Group.clean_registries does); 'cron' ZREMs a member of rq:cron_schedulers while its
-- score is the one the plan read and its hash rq:cron_scheduler:<name> is still missing.
-- Slots: BATCH_HEAD, then INDEX_ENTRY per entry.
"""
    + batch_loop(BATCH_HEAD, INDEX_ENTRY)
    + INDEX_ENTRY.advance()
    + """
  local done = 0
  if redis.call('EXISTS', owner) == 0 then
    if op == 'group' and writable(index, 'set') then
      done = redis.call('SREM', index, member)
    elseif op == 'cron' and writable(index, 'zset') and read('ZSCORE', index, member) == score then
      done = redis.call('ZREM', index, member)
    end
  end
  out[j] = done
end
return out
"""
)
"""Removes entries of ``rq:groups`` and ``rq:cron_schedulers`` whose owner is gone (``clean_registries``)."""

ORPHAN = Slots(
    keys=("key", "owner"), args=("kind", "ghost", "status", "heartbeat", "nchildren")
)
"""One key of ``DELETE_ORPHANS``: it and its owner job hash; its type, whether it is a
ghost job hash (``1``/``0``), the planned status and heartbeat (``+`` and the value, ''
if absent), and the number of child ids (ARGV) and child job hashes (KEYS) that follow."""

DELETE_ORPHANS = (
    _FENCE
    + _GUARDS
    + _TERMINAL_TABLE
    + """
-- Deletes keys that belong to no job, each re-checked: still of the planned type and
-- without TTL, and its owner job hash still missing; a dependents set must hold exactly
-- the planned children, each missing or terminal. A ghost job hash must still lack
-- 'data' with 'status' and 'last_heartbeat' as planned ('+' .. value, '' if absent).
-- Slots: BATCH_HEAD, then per key ORPHAN followed by its child job hashes (KEYS) and
-- child ids (ARGV).
local function field(key, name)
  local value = redis.call('HGET', key, name)
  return value and ('+' .. value) or ''
end
local function children_done(key, a, k, n)
  if redis.call('SCARD', key) ~= n then return false end
  for c = 0, n - 1 do
    if redis.call('SISMEMBER', key, ARGV[a + c]) ~= 1 then return false end
    local status = read('HGET', KEYS[k + c], 'status')
    if status and not terminal[status] then return false end
  end
  return true
end
"""
    + batch_loop(BATCH_HEAD, ORPHAN)
    + f"""
  local n = tonumber(nchildren)
  local children_k, children_a = k + {len(ORPHAN.keys)}, a + {len(ORPHAN.args)}
"""
    + """
  local ok = redis.call('PTTL', key) == -1 and redis.call('TYPE', key)['ok'] == kind
  if ok and ghost == '1' then
    ok = redis.call('HEXISTS', key, 'data') == 0 and field(key, 'status') == status
      and field(key, 'last_heartbeat') == heartbeat
  elseif ok then
    ok = redis.call('EXISTS', owner) == 0 and (n == 0 or children_done(key, children_a, children_k, n))
  end
  out[j] = ok and redis.call('UNLINK', key) or 0
  k, a = children_k + n, children_a + n
end
return out
"""
)
"""Deletes orphaned side keys and ghost job hashes (``sweep_orphans``)."""
