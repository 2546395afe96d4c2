"""kombu's Redis transport, with a consumer that waits out a Redis refusing writes.

Celery's consumer keeps its own record of what it delivered and not yet acknowledged (kombu's
QoS: `ZADD unacked_index` + `HSET unacked` once a message is popped, `ZREM` + `HDEL` on its
ack, each in MULTI). A Redis at `maxmemory` under `noeviction` refuses every command queued in
MULTI, a read-only replica every write, with errors kombu does not count as connection
errors, and Celery stops the worker with "Unrecoverable error": the popped message is left
to the in-flight sweep, an hour later.
Counting them as connection errors instead is no better: the consumer reconnects, an ack
that failed keeps its prefetch slot, and the worker stops consuming without a line.

So each of those writes is retried where it is made, with backoff, until Redis takes it:
the consumer pauses (one warning when it starts waiting, one line when it goes on), nothing
popped is dropped and every ack lands. A shutdown asked for meanwhile ends the wait. The
periodic restore of overdue messages is skipped while Redis refuses it; it runs again later.

Two more things happen here because this is where Celery receives a message:
- Its in-flight record is leased at once (common.queue.hold): should the consumer lose the
  connection and the message with it, the sweep queues it again within about a minute, not
  a visibility timeout (an hour) later. The worker renews the lease while it holds it.
- When Redis crashes, closing the lost connection restores the unacknowledged messages and
  kombu then needs a connection it no longer has (an AttributeError, not a connection error,
  which Celery's consumer does not survive: the worker's main process exited). The restore
  is skipped instead; the leases above bring those messages back. An acknowledgement that
  meets the same closed channel is dropped with a warning: its event is committed already.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery.worker import state as worker_state
from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError

from common import queue

logger = logging.getLogger("crm.worker")

T = TypeVar("T")
REFUSED = (OutOfMemoryError, ReadOnlyError)
_PAUSES = (0.25, 0.5, 1.0, 2.0, 5.0)  # then every 5 s


def patiently(what: str, write: Callable[[], T]) -> T:
    """`write()`, retried while Redis refuses writes; the first refusal and the recovery are
    logged once each. Raises the refusal if the worker is asked to stop meanwhile."""
    waited = 0
    started = time.monotonic()
    while True:
        try:
            result = write()
        except REFUSED as exc:
            if worker_state.should_stop is not None or worker_state.should_terminate is not None:
                raise
            if waited == 0:
                logger.warning(
                    "Redis refuses writes (%s): %s waits until it takes them again",
                    type(exc).__name__, what,
                )  # fmt: skip
            time.sleep(_PAUSES[min(waited, len(_PAUSES) - 1)])
            waited += 1
            continue
        if waited:
            logger.warning(
                "Redis takes writes again: %s went on after %.1f s",
                what, time.monotonic() - started,
            )  # fmt: skip
        return result


def _lost_channel(what: str) -> None:
    # kombu again needs the connection of a channel a Redis crash closed (see the module's
    # docstring). The event's outcome is committed and its in-flight record forgotten; the
    # unacknowledged copy kombu keeps comes back after the visibility timeout, a no-op then.
    logger.warning("%s on a broker connection that is gone was dropped", what)


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        patiently("the consumer", lambda: super(QoS, self).append(message, delivery_tag))
        event_id = message.headers.get("id") if isinstance(message.headers, dict) else None
        if isinstance(event_id, str):
            channel: Any = self.channel  # ours (below), typed as kombu's base channel
            try:
                with channel.conn_or_acquire() as client:
                    queue.hold(client, [event_id], seconds=queue.LEASE_SECONDS)
            except RedisError as exc:
                # Held until its record is due (a visibility timeout): late, never lost.
                logger.warning("received event not leased: %s", type(exc).__name__)

    def restore_unacked(self, client: Any = None) -> Any:
        try:
            return super().restore_unacked(client)
        except (AttributeError, RedisError) as exc:
            logger.warning(
                "unacknowledged messages not restored on closing the broker connection (%s);"
                " the in-flight sweep queues them again", type(exc).__name__,
            )  # fmt: skip
            return None

    def ack(self, delivery_tag: str) -> None:
        try:
            patiently("an acknowledgement", lambda: super(QoS, self).ack(delivery_tag))
        except AttributeError:
            _lost_channel("an acknowledgement")

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            patiently("a rejection", lambda: super(QoS, self).reject(delivery_tag, requeue))
        except AttributeError:
            _lost_channel("a rejection")

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().restore_visible(*args, **kwargs)
        except REFUSED as exc:
            logger.warning("unacked restore skipped: Redis refuses writes (%s)", type(exc).__name__)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def queue_declare(self, *args: Any, **kwargs: Any) -> Any:
        # Declaring reads the queue's length inside MULTI, which a full Redis refuses too.
        return patiently(
            "starting to consume", lambda: super(Channel, self).queue_declare(*args, **kwargs)
        )


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel, Channel):
    """The channel above, its connections made to whichever server the Sentinels name master:
    after a failover the consumer's reconnection finds the new one."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
