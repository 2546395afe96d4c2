"""The in-flight record: every queued event's message, kept until a worker has finished it.

Celery's Redis transport takes a message off the list with BRPOP and records it as
unacknowledged in a second command; a consumer killed between the two loses the message, and
no visibility timeout brings it back. So the receiver's claim-and-enqueue script (and every
replay) also stores the message here, due `grace` seconds later; a worker forgets it once the
event's outcome is committed; and each worker sweeps for events past due and queues them
again. A copy of an event that did arrive meanwhile is harmless: the worker's durable guard
(the unique webhook_events row) turns it into a no-op.
"""

from __future__ import annotations

import time

import redis

from common.envelope import QUEUE_NAME

MESSAGES_KEY = "crm:inflight"
DUE_KEY = "crm:inflight:due"

# KEYS: messages hash, due zset, queue. ARGV: now, grace, batch size. Atomic, so two workers
# sweeping at once never push the same event twice; each pushed event is due again later.
SWEEP_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local message = redis.call('HGET', KEYS[1], id)
  if message then
    redis.call('LPUSH', KEYS[3], message)
    redis.call('ZADD', KEYS[2], ARGV[1] + ARGV[2], id)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return #ids
"""


def record(pipe: redis.client.Pipeline, event_id: str, message: bytes, grace: int) -> None:
    """Add the in-flight record to a pipeline that queues the message."""
    pipe.hset(MESSAGES_KEY, event_id, message)
    pipe.zadd(DUE_KEY, {event_id: time.time() + grace})


def forget(client: redis.Redis, *event_ids: str) -> None:
    """The events' outcomes are committed: they need no more looking after. Not a transaction:
    a due time left without its message is dropped by the next sweep."""
    if not event_ids:
        return
    pipe = client.pipeline(transaction=False)
    pipe.hdel(MESSAGES_KEY, *event_ids)
    pipe.zrem(DUE_KEY, *event_ids)
    pipe.execute()


def postpone(client: redis.Redis, seconds: float, *event_ids: str) -> None:
    """The events are not lost, only held (taken by a worker, or waiting for a retry): due
    again `seconds` from now, the way a broker's visibility timeout restarts at delivery."""
    if event_ids:
        due = time.time() + seconds
        client.zadd(DUE_KEY, dict.fromkeys(event_ids, due), xx=True)


def sweep(client: redis.Redis, grace: int, batch: int = 500) -> int:
    """Queue again every event past due; the number queued."""
    script = client.register_script(SWEEP_LUA)
    return int(script(keys=[MESSAGES_KEY, DUE_KEY, QUEUE_NAME], args=[time.time(), grace, batch]))
