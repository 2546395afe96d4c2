"""kombu's Redis transport, with a Redis that refuses writes counted as a lost connection.

Full (`maxmemory` reached under `noeviction`) or a read-only replica, Redis answers the
consumer's bookkeeping (`ZADD unacked_index`) with an error that kombu files under channel
errors, and Celery stops the worker with "Unrecoverable error". As connection errors, the
consumer waits with backoff and reconnects, and goes on once Redis takes writes again; a
message popped in between is brought back by the in-flight sweep (common.queue).
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError, ReadOnlyError


class Transport(kombu_redis.Transport):
    connection_errors = (*kombu_redis.Transport.connection_errors, OutOfMemoryError, ReadOnlyError)
