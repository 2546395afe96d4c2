"""The queue: everything that happens to a queued message, and the only code that touches it.

A message's life, from the receiver's 202 to the worker's commit:

1. Built. The receiver wraps the event's envelope in a Celery task message (`message.build`)
   whose task id is the event id. Everything below finds an event by that one id.
2. Claimed and queued. One Lua script (`Claimer`) claims the idempotency key, pushes the
   message onto the `webhooks` list and records it in flight (`crm:inflight`, due a visibility
   timeout later) — atomically, so no key is ever claimed for an event that is not queued.
   Concurrent deliveries share one Redis round trip (`pipelined.PipelinedScript`). A replay
   (`enqueue`) queues and records a stored envelope the same way, without a key.
3. Taken. Celery's consumer pops one message for a task; under a backlog that task also takes
   up to `WORKER_BATCH_SIZE` - 1 more straight off the list (`take`), popped and held for a
   short lease in one script, and renews the lease while it works (`hold`): if its process
   dies, they are due again within a minute. (Celery's pop and its unacked mark are two
   commands, and a batch is not in Celery's unacked store at all: the in-flight record covers
   both.)
4. Begun. Right before a process applies an event it records the attempt, with the process
   that holds it (`begin`); the record goes when the attempt ends in any handled way (`end`).
   An attempt left over whose process is gone means that process died holding the event
   (`unfinished`), which the delivery policy limits. Two copies of one event applied at once
   (a sweep's copy, a replay) are two live attempts: neither counts as a death.
5. Finished. Once the event's outcome (processed, ignored, dead letter) is committed the worker
   forgets it (`forget`); Celery acknowledges its own message when the task returns.
6. Queued again (`requeue`): a transient failure is retried with one retry more once a backoff
   has passed. The wait is kept in Redis (`SCHEDULED_KEY`), not in a consumer's memory, and
   `release` queues it when due. An event whose dead letter could not be written is given
   back as it was — counted (`gave_back`): past a bound the policy parks it instead (`park`),
   in a hash operators see and `crm-dlq rescue` empties into the dead-letter store.
7. Swept. Every worker periodically queues again whatever is past due in the in-flight record
   (`sweep`): a message whose holder died or lost it. What a consumer holds is leased, not
   due an hour later: from the moment Celery receives it (worker.broker) and renewed while
   the worker still has it (`hold`), so one dropped with a lost connection is back within
   about a minute. A copy of an event that was in fact committed is harmless: the worker's
   durable guard (the unique webhook_events row) makes it a no-op.

The delivery policy — what is retried, when an event is dead-lettered — lives in
worker/delivery.py; this package only moves messages.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aioredis

from common import jsonexact
from common.envelope import Envelope
from common.queue import message
from common.queue.message import QUEUE_NAME, TASK_NAME, QueuedTask
from common.queue.pipelined import Arg, NotReplicated, PipelinedScript

__all__ = [
    "QUEUE_NAME",
    "TASK_NAME",
    "Claimer",
    "InFlight",
    "NotReplicated",
    "QueueDepth",
    "QueuedTask",
    "begin",
    "depth",
    "depth_history",
    "end",
    "enqueue",
    "forget",
    "gave_back",
    "hold",
    "in_flight",
    "message",
    "park",
    "parked",
    "parked_count",
    "queued_envelope",
    "record_depth",
    "release",
    "requeue",
    "sweep",
    "take",
    "unfinished",
    "unpark",
]

IDEMPOTENCY_PREFIX = "crm:idem:"
INFLIGHT_KEY = "crm:inflight"  # event id -> the message that carries it
DUE_KEY = "crm:inflight:due"  # event id -> when the sweep queues it again (Unix seconds)
SCHEDULED_KEY = "crm:inflight:scheduled"  # event id -> when its retry is queued (Unix seconds)
GIVEBACKS_KEY = "crm:inflight:givebacks"  # event id -> times given back without an outcome
ATTEMPTS_PREFIX = "crm:attempts:"  # + event id: attempt -> the process applying it
ALIVE_PREFIX = "crm:alive:"  # + process: set while that process lives (other hosts' view)
PARKED_KEY = "crm:parked"  # event id -> what PostgreSQL refused to store, for crm-dlq rescue
UNACKED_KEY = "unacked"  # kombu's: messages Celery delivered and has not acknowledged
# How long a process holds an event it has in hand before the sweep may queue it again;
# renewed while it works. A lost event comes back within this and one sweep interval.
LEASE_SECONDS = 30
# How long a process counts as alive after it began an attempt, for other hosts (on its own
# host a process is checked directly): longer than any one transaction takes.
ALIVE_SECONDS = 300

# KEYS: idempotency key, queue, in-flight messages, due times. ARGV: event id, message, key
# ttl, grace, "1" when the reply waits for replicas. The first delivery's event id on a repeat;
# nothing when it claimed and queued. A repeat found while waiting for replicas writes its
# claim again (same value, same expiry): a read gives WAIT nothing to wait for, and the claim
# it found may not be on a replica yet (a 503 answered it) — the write, replicated after the
# claim, makes the WAIT that follows cover both.
_CLAIM_AND_ENQUEUE = """
local first = redis.call('GET', KEYS[1])
if first then
  if ARGV[5] == '1' then redis.call('SET', KEYS[1], first, 'KEEPTTL') end
  return first
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[4], tonumber(now[1]) + tonumber(ARGV[4]), ARGV[1])
return false
"""

# KEYS: in-flight messages, due times, queue, scheduled retries. ARGV: now, grace, most to
# queue, lease. Atomic, so two workers sweeping at once never queue one event twice; each one
# queued is due again later. Two kinds are queued again:
# - past due: a lease ran out (its holder died or dropped it), or a visibility timeout passed;
# - popped and never leased: a message waiting on the list is due `grace` after it was
#   pushed, and the list is first in, first out, so one pushed before the message now at the
#   consuming end (a smaller due) is off the list. If nobody leased it within a lease of its
#   push — a consumer's connection dropped with the pop's reply — it is lost, not waiting.
_SWEEP = """
local now, grace, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local lost = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[3])) do
  table.insert(lost, id)
end
local before = now + grace - lease
local head = redis.call('LINDEX', KEYS[3], -1)
if head then
  local ok, message = pcall(cjson.decode, head)
  local score = ok and type(message) == 'table' and type(message.headers) == 'table'
    and type(message.headers.id) == 'string' and redis.call('ZSCORE', KEYS[2], message.headers.id)
  before = score and math.min(before, tonumber(score)) or now
end
if before > now + lease then
  local unleased = redis.call(
    'ZRANGEBYSCORE', KEYS[2], string.format('(%.17g', now + lease),
    string.format('(%.17g', before), 'LIMIT', 0, ARGV[3])
  for _, id in ipairs(unleased) do
    if not redis.call('ZSCORE', KEYS[4], id) then table.insert(lost, id) end
  end
end
for _, id in ipairs(lost) do
  local queued = redis.call('HGET', KEYS[1], id)
  if queued then
    redis.call('LPUSH', KEYS[3], queued)
    redis.call('ZADD', KEYS[2], now + grace, id)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return #lost
"""


def idempotency_key(provider: str, key: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{provider}:{key}"


class Claimer:
    """The receiver's side: claim a delivery's idempotency key and queue its event, atomically."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl_seconds: int,
        grace_seconds: int,
        wait_replicas: int = 0,
        wait_ms: int = 0,
    ) -> None:
        """`wait_replicas`: an answer stands only once that many replicas hold what the claim
        wrote or found (REDIS_WAIT_REPLICAS); otherwise the call raises NotReplicated."""
        waits = {"wait_replicas": wait_replicas, "wait_ms": wait_ms}
        self._script = PipelinedScript(client, _CLAIM_AND_ENQUEUE, **waits)
        self._confirm = PipelinedScript(client, _CLAIMED_BY, **waits)
        self._waiting = "1" if wait_replicas else "0"
        self._ttl = ttl_seconds
        self._grace = grace_seconds

    async def claim_and_enqueue(self, envelope: Envelope) -> str | None:
        """None when this delivery was queued; the first delivery's event id on a repeat."""
        keys: list[Arg] = [
            idempotency_key(envelope.provider, envelope.idempotency_key),
            QUEUE_NAME,
            INFLIGHT_KEY,
            DUE_KEY,
        ]
        args: list[Arg] = [
            envelope.event_id,
            message.build(envelope),
            self._ttl,
            self._grace,
            self._waiting,
        ]
        first = await self._script(keys=keys, args=args)
        if first is None:
            return None
        first_id = _text(first)
        # A retried call whose first attempt ran (its reply lost) finds its own claim.
        return None if first_id == envelope.event_id else first_id

    async def claimed_by(self, envelope: Envelope) -> str | None:
        """The event id holding this delivery's key, if any: after a lost reply, whether the
        script ran."""
        key = idempotency_key(envelope.provider, envelope.idempotency_key)
        claimed = await self._confirm(keys=[key], args=[self._waiting])
        return None if claimed is None else _text(claimed)


# KEYS: idempotency key. ARGV: "1" when the reply waits for replicas. Who holds the key;
# written again when waiting, for the reason given above _CLAIM_AND_ENQUEUE.
_CLAIMED_BY = """
local first = redis.call('GET', KEYS[1])
if first and ARGV[1] == '1' then redis.call('SET', KEYS[1], first, 'KEEPTTL') end
return first
"""


# KEYS: queue, due times. ARGV: most to pop, the lease's end (Unix seconds), our task's name.
# The pop and the lease in one step: a process killed between the two would leave the popped
# events due only a visibility timeout after they were queued (an hour by default), off the
# list. What is not ours to apply (another task, a message with an ETA) keeps its due time:
# it goes back to the list, and the list stays in the order of its due times.
# `#!lua` makes Redis refuse the whole script while it is out of memory, before it pops
# anything (a script refused half-way would lose what it popped); `take` then pops plainly.
_TAKE = """#!lua
local popped = redis.call('RPOP', KEYS[1], ARGV[1])
if not popped then return {} end
for _, raw in ipairs(popped) do
  local ok, message = pcall(cjson.decode, raw)
  if ok and type(message) == 'table' and type(message.headers) == 'table'
      and type(message.headers.id) == 'string' and message.headers.task == ARGV[3]
      and (message.headers.eta == nil or message.headers.eta == cjson.null) then
    redis.call('ZADD', KEYS[2], 'XX', ARGV[2], message.headers.id)
  end
end
return popped
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _queue_and_record(client: redis.Redis, raw: bytes, event_id: str, due: float) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.lpush(QUEUE_NAME, raw)
    pipe.hset(INFLIGHT_KEY, event_id, raw)
    pipe.zadd(DUE_KEY, {event_id: due})
    pipe.delete(ATTEMPTS_PREFIX + event_id)  # an attempt that ended here did not die
    pipe.execute()


def enqueue(client: redis.Redis, envelope: Envelope, *, grace_seconds: int) -> None:
    """Queue an envelope without claiming its key: a replay of a dead letter."""
    _queue_and_record(
        client, message.build(envelope), envelope.event_id, time.time() + grace_seconds
    )


def requeue(
    client: redis.Redis, task: QueuedTask, *, retries: int, countdown: float, grace_seconds: int
) -> None:
    """Queue a task again — a retry or a give-back, whether Celery handed it over or the task
    took it — and let its in-flight record hold the new message. With a countdown the message
    waits in Redis and `release` queues it when due; no consumer holds it meanwhile."""
    raw = message.again(task, retries=retries, countdown=0)
    if countdown <= 0:
        _queue_and_record(client, raw, task.task_id, time.time() + grace_seconds)
        return
    when = time.time() + countdown
    pipe = client.pipeline(transaction=True)
    pipe.hset(INFLIGHT_KEY, task.task_id, raw)
    pipe.zadd(SCHEDULED_KEY, {task.task_id: when})
    pipe.zadd(DUE_KEY, {task.task_id: when + grace_seconds})
    pipe.delete(ATTEMPTS_PREFIX + task.task_id)
    pipe.execute()


# KEYS: scheduled retries, in-flight messages, due times, queue. ARGV: now, grace, most to
# queue. A retry joins the list like a new message (the sweep relies on the list's order).
_RELEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local queued = redis.call('HGET', KEYS[2], id)
  if queued then
    redis.call('LPUSH', KEYS[4], queued)
    redis.call('ZADD', KEYS[3], ARGV[1] + ARGV[2], id)
  end
end
return #ids
"""


def release(client: redis.Redis, *, grace_seconds: int, batch: int = 500) -> int:
    """Queue the retries whose countdown has passed; how many."""
    script = client.register_script(_RELEASE)
    keys = [SCHEDULED_KEY, INFLIGHT_KEY, DUE_KEY, QUEUE_NAME]
    return int(script(keys=keys, args=[time.time(), grace_seconds, batch]))


def gave_back(client: redis.Redis, event_id: str) -> int:
    """Count one more give-back of the event; how many it has had."""
    return int(client.hincrby(GIVEBACKS_KEY, event_id, 1))


def park(client: redis.Redis, task: QueuedTask, *, reason: str, error: str) -> None:
    """Keep an event PostgreSQL refused to store even as a dead letter, out of the queue and
    the in-flight record, where `crm-status`, the console and `crm-dlq rescue` find it."""
    record = {
        "envelope": task.envelope,
        "reason": reason,
        "error": error,
        "attempts": task.retries + 1,
        "parked_at": datetime.now(UTC).isoformat(),
    }
    pipe = client.pipeline(transaction=True)
    pipe.hset(PARKED_KEY, task.task_id, jsonexact.dumps(record))
    _forget_in(pipe, [task.task_id])
    pipe.execute()


def parked(client: redis.Redis, limit: int = 1000) -> dict[str, dict[str, Any]]:
    """Parked events by id (at most `limit`): each its envelope, reason, error, attempts."""
    found: dict[str, dict[str, Any]] = {}
    for event_id, raw in client.hscan_iter(PARKED_KEY, count=100):
        found[_text(event_id)] = jsonexact.loads(raw)
        if len(found) >= limit:
            break
    return found


def parked_count(client: redis.Redis) -> int:
    return int(client.hlen(PARKED_KEY))


def unpark(client: redis.Redis, event_id: str) -> None:
    """The parked event is in the dead-letter store now."""
    client.hdel(PARKED_KEY, event_id)


def take(client: redis.Redis, limit: int, *, hold_seconds: int) -> list[QueuedTask]:
    """Up to `limit` more queued tasks, oldest first, straight off the list, held for
    `hold_seconds` from the moment they leave it. What is not for a batch now (another task,
    a retry whose countdown still runs, an unreadable message) goes back to the consuming end
    at once, for Celery, due when it was. A popped task is never dropped: a Redis refusing
    writes costs the lease, not the task."""
    if limit < 1:
        return []
    try:
        popped: list[bytes] = client.register_script(_TAKE)(
            keys=[QUEUE_NAME, DUE_KEY], args=[limit, time.time() + hold_seconds, TASK_NAME]
        )
    except redis.exceptions.OutOfMemoryError:
        # Refused before it ran. Popping frees memory, so a plain RPOP is still allowed;
        # the lease is not, and the tasks are ours all the same: unheld, each is due again
        # when its record says (a visibility timeout after it was queued), as before it.
        popped = client.rpop(QUEUE_NAME, limit) or []  # type: ignore[assignment]
    now = datetime.now(UTC)
    taken: list[QueuedTask] = []
    others: list[bytes] = []
    for raw in popped:
        try:
            task = message.read(raw)
        except ValueError:
            others.append(raw)
            continue
        if task.task_name != TASK_NAME or (task.eta is not None and task.eta > now):
            others.append(raw)
        else:
            taken.append(task)
    if others:
        _give_back(client, others)
    late = [task.task_id for task in taken if task.eta is not None]
    if late:  # an ETA already past: ours, but the script left it unleased
        with contextlib.suppress(redis.RedisError):
            hold(client, late, seconds=hold_seconds)
    return taken


# Popped messages that are not for this batch must go back: nothing else would ever queue
# them again before the sweep. A full Redis refuses the RPUSH (popping frees memory, so it is
# allowed), hence a wait — bounded, after which the sweep is the way back.
_GIVE_BACK_PAUSES = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
_GIVE_BACK_SECONDS = 600.0


def _give_back(client: redis.Redis, raws: list[bytes]) -> None:
    started, tries = time.monotonic(), 0
    while True:
        try:
            # RPUSH in reverse: the consuming end (right) gets them back in their queue order.
            client.rpush(QUEUE_NAME, *reversed(raws))
            return
        except redis.RedisError:
            if time.monotonic() - started > _GIVE_BACK_SECONDS:
                raise
            time.sleep(_GIVE_BACK_PAUSES[min(tries, len(_GIVE_BACK_PAUSES) - 1)])
            tries += 1


def hold(client: redis.Redis, event_ids: list[str], *, seconds: float) -> None:
    """Renew the lease on taken events: due again `seconds` from now."""
    if event_ids:
        client.zadd(DUE_KEY, dict.fromkeys(event_ids, time.time() + seconds), xx=True)


def holder() -> str:
    """This process, as an attempt record names it: host, pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_alive(process: str, others: dict[str, bool]) -> bool:
    host, _, pid = process.rpartition(":")
    if host != socket.gethostname():
        return others.get(process, False)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def unfinished(client: redis.Redis, event_ids: list[str]) -> dict[str, int]:
    """For each event, the attempts begun that never ended and whose process is gone: each one
    a process that died holding it. An attempt still running elsewhere is not one."""
    if not event_ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for event_id in event_ids:
        pipe.hvals(ATTEMPTS_PREFIX + event_id)
    holders = [[_text(value) for value in values] for values in pipe.execute()]
    here = socket.gethostname()
    remote = sorted({h for each in holders for h in each if h.rpartition(":")[0] != here})
    others: dict[str, bool] = {}
    if remote:
        marks = client.mget([ALIVE_PREFIX + process for process in remote])
        others = {process: mark is not None for process, mark in zip(remote, marks, strict=True)}
    return {
        event_id: sum(not _is_alive(process, others) for process in each)
        for event_id, each in zip(event_ids, holders, strict=True)
    }


# An attempt record outlives no event by long: forget and requeue delete it, this bounds it.
_ATTEMPTS_TTL_SECONDS = 7 * 24 * 3600


def begin(client: redis.Redis, event_ids: list[str]) -> str:
    """These events are about to be applied by this process: the attempt's id, for `end`."""
    attempt = uuid.uuid4().hex
    if event_ids:
        pipe = client.pipeline(transaction=False)
        pipe.set(ALIVE_PREFIX + holder(), 1, ex=ALIVE_SECONDS)
        for event_id in event_ids:
            pipe.hset(ATTEMPTS_PREFIX + event_id, attempt, holder())
            pipe.expire(ATTEMPTS_PREFIX + event_id, _ATTEMPTS_TTL_SECONDS)
        pipe.execute()
    return attempt


def end(client: redis.Redis, event_ids: list[str], attempt: str) -> None:
    """This attempt ended without an outcome (a batch that failed as a whole)."""
    if event_ids:
        pipe = client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hdel(ATTEMPTS_PREFIX + event_id, attempt)
        pipe.execute()


def _forget_in(pipe: Any, event_ids: list[str]) -> None:
    pipe.hdel(INFLIGHT_KEY, *event_ids)
    pipe.zrem(DUE_KEY, *event_ids)
    pipe.zrem(SCHEDULED_KEY, *event_ids)
    pipe.hdel(GIVEBACKS_KEY, *event_ids)
    pipe.delete(*(ATTEMPTS_PREFIX + event_id for event_id in event_ids))


def forget(client: redis.Redis, *event_ids: str) -> None:
    """The events' outcomes are committed: no more looking after. Not a transaction: a due
    time left without its message is dropped by the next sweep."""
    if event_ids:
        pipe = client.pipeline(transaction=False)
        _forget_in(pipe, list(event_ids))
        pipe.execute()


def sweep(client: redis.Redis, *, grace_seconds: int, batch: int = 500) -> int:
    """Queue again every event past due; how many were queued."""
    script = client.register_script(_SWEEP)
    keys = [INFLIGHT_KEY, DUE_KEY, QUEUE_NAME, SCHEDULED_KEY]
    return int(script(keys=keys, args=[time.time(), grace_seconds, batch, LEASE_SECONDS]))


@dataclass(frozen=True)
class InFlight:
    count: int  # accepted events not yet committed
    overdue: int  # of those, past due: their holder died (or the sweep has not run yet)


DEPTH_HISTORY_KEY = "crm:history:depth"  # "<minute>:<depth>" scored by the minute (a day kept)
_DAY_SECONDS = 24 * 3600


def record_depth(client: redis.Redis) -> None:
    """Note this minute's queue depth, for the console's picture of the last day. Every worker
    notes it; the picture takes the largest of a minute."""
    minute = int(time.time()) // 60 * 60
    pipe = client.pipeline(transaction=False)
    pipe.llen(QUEUE_NAME)
    depth = pipe.execute()[0]
    pipe.zadd(DEPTH_HISTORY_KEY, {f"{minute}:{depth}": minute})
    pipe.zremrangebyscore(DEPTH_HISTORY_KEY, "-inf", minute - _DAY_SECONDS)
    pipe.execute()


async def depth_history(client: aioredis.Redis) -> dict[datetime, int]:
    """The queue's depth by minute over the last day, as recorded (the largest of a minute)."""
    since = int(time.time()) - _DAY_SECONDS
    history: dict[datetime, int] = {}
    for member in await client.zrangebyscore(DEPTH_HISTORY_KEY, since, "+inf"):
        minute, _, depth = (
            member.decode() if isinstance(member, bytes) else str(member)
        ).partition(":")
        at = datetime.fromtimestamp(int(minute), tz=UTC)
        history[at] = max(history.get(at, 0), int(depth))
    return history


def in_flight(client: redis.Redis) -> InFlight:
    pipe = client.pipeline(transaction=False)
    pipe.hlen(INFLIGHT_KEY)
    pipe.zcount(DUE_KEY, "-inf", time.time())
    count, overdue = pipe.execute()
    return InFlight(int(count), int(overdue))


async def queued_envelope(client: aioredis.Redis, event_id: str) -> Envelope | None:
    """The envelope of an event that is accepted but not yet committed, from its in-flight
    record; None when there is none (never queued, or finished)."""
    raw = await client.hget(INFLIGHT_KEY, event_id)
    if raw is None:
        return None
    try:
        return Envelope.from_dict(message.read(_text(raw).encode()).envelope)
    except ValueError:
        return None


@dataclass(frozen=True)
class QueueDepth:
    waiting: int  # messages on the list
    unacked: int  # delivered by Celery, not yet acknowledged
    oldest_age_seconds: float  # of the message at the consuming end; 0 when empty


async def depth(client: aioredis.Redis) -> QueueDepth:
    pipe = client.pipeline(transaction=False)
    return _depth(await _ask_depth(pipe).execute())


def depth_now(client: redis.Redis) -> QueueDepth:
    """`depth`, for a caller without an event loop (crm-status, a console page's thread)."""
    return _depth(_ask_depth(client.pipeline(transaction=False)).execute())


def _ask_depth(pipe: Any) -> Any:  # a pipeline, blocking or asyncio: the same three commands
    return pipe.llen(QUEUE_NAME).hlen(UNACKED_KEY).lindex(QUEUE_NAME, -1)


def _depth(replies: list[Any]) -> QueueDepth:
    waiting, unacked, oldest = replies
    return QueueDepth(int(waiting), int(unacked), _age(oldest))


def _age(raw: bytes | None) -> float:
    if raw is None:
        return 0.0
    try:
        received = Envelope.from_dict(message.read(raw).envelope).received_at
        return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(received)).total_seconds())
    except ValueError:
        return 0.0
