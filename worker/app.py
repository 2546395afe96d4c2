"""The Celery application and its delivery rules.

- acks_late + reject_on_worker_lost: a message leaves Redis only after its transaction
  committed, so a worker killed mid-event loses nothing; the webhook_events row makes the
  redelivery harmless.
- prefetch 1: a busy worker does not hoard messages that an idle one could take.
- visibility timeout (BROKER_VISIBILITY_TIMEOUT, default 1 h): how long a delivered but
  unacknowledged message waits before Redis hands it to another worker. It must exceed the
  longest an event can take, retry countdowns included.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.apps.worker import install_worker_term_handler  # type: ignore[attr-defined]
from celery.signals import (
    celeryd_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from celery.worker import state as worker_state
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from common import metrics, queue
from common.envelope import describe
from common.logging import clear_event, configure_logging, set_event
from common.queue import QUEUE_NAME
from common.queue.durability import warn_if_not_durable
from common.redis_clients import celery_broker, connect
from common.settings import get_settings
from worker import resources
from worker.delivery import BATCH_LEASE_SECONDS

logger = logging.getLogger("crm.worker")


def _config() -> dict[str, Any]:
    """Read when Celery first needs its configuration, not at import."""
    settings = get_settings()
    broker = celery_broker(settings.broker)
    return {
        **broker,
        # A full or read-only Redis pauses the consumer instead of ending it (worker/broker.py).
        "broker_transport": (
            "worker.broker:SentinelTransport"
            if settings.broker.sentinels
            else "worker.broker:Transport"
        ),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            **broker["broker_transport_options"],
            "visibility_timeout": settings.broker_visibility_timeout,
            # How often a worker restores messages whose holder died (kombu's default is ~100 s
            # apart); a tenth of the visibility timeout, at most a minute.
            "unacked_restore_interval": _sweep_interval(),
            "unacked_restore_throttle": 1,
        },
        "task_default_queue": QUEUE_NAME,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "imports": ["worker.tasks"],
    }


def _sweep_interval() -> int:
    # Often enough that what a dead process held comes back about a lease later.
    return min(BATCH_LEASE_SECONDS, max(1, get_settings().broker_visibility_timeout // 10))


app = Celery("crm-worker")
app.add_defaults(_config)


@celeryd_init.connect  # early enough for the warnings Celery gives at start-up
@setup_logging.connect  # connected, Celery installs no handlers of its own: one format for all
def _logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@worker_ready.connect
def _quiet_shutdown(sender: Any = None, **_: Any) -> None:
    # Celery's SIGTERM handler prints "worker: Warm shutdown" past the log; the same handler
    # without the print, and the line logged instead (_log_shutdown).
    install_worker_term_handler(sender.controller, verbose=False)


@worker_shutting_down.connect
def _log_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    logger.info("worker: %s shutdown (%s): finishing the events in hand", how.lower(), sig)


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """In a container of its own the worker serves its pool's metrics itself; beside the
    receiver (make run) it shares PROMETHEUS_MULTIPROC_DIR and the receiver serves them."""
    port = get_settings().worker_metrics_port
    if port and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, registry=registry)


_sweeper_stop = threading.Event()
_RELEASE_INTERVAL = 1.0  # how late a retry may be queued after its countdown
_RENEW_INTERVAL = BATCH_LEASE_SECONDS / 3


def _held_by_consumer() -> list[str]:
    """The events this worker's consumer holds: received and waiting for a pool process, or
    being applied by one."""
    for _ in range(3):
        try:  # the consumer changes these sets while we read them
            held = [*worker_state.reserved_requests, *worker_state.active_requests]
            return sorted({str(request.id) for request in held})
        except RuntimeError:
            continue
    return []


def _look_after_in_flight() -> None:
    """The in-flight record's keeper, in the worker's main process (common.queue): queues the
    retries that are due, renews the leases of what the consumer holds, and queues again
    what a consumer lost."""
    settings = get_settings()
    grace = settings.broker_visibility_timeout
    client = connect(settings.broker, timeout=10)
    renewed = swept = time.monotonic()
    recorded_minute = -1
    failing = False
    try:
        while not _sweeper_stop.wait(_RELEASE_INTERVAL):
            now = time.monotonic()
            try:
                queue.release(client, grace_seconds=grace)
                if now - renewed >= _RENEW_INTERVAL:
                    queue.hold(client, _held_by_consumer(), seconds=BATCH_LEASE_SECONDS)
                    renewed = now
                if int(time.time()) // 60 != recorded_minute:  # the console's depth picture
                    queue.record_depth(client)
                    recorded_minute = int(time.time()) // 60
                if now - swept >= _sweep_interval():
                    swept = now
                    lost = queue.sweep(client, grace_seconds=grace)
                    if lost:
                        logger.warning("in-flight sweep queued %d event(s) again", lost)
            except redis.RedisError as exc:
                if not failing:  # once per outage, not once a second
                    logger.warning("in-flight upkeep paused: %s", type(exc).__name__)
                failing = True
                continue
            if failing:
                logger.warning("in-flight upkeep resumed")
                failing = False
    finally:
        client.close()


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    threading.Thread(target=_look_after_in_flight, name="inflight-keeper", daemon=True).start()


@worker_ready.connect
def _check_durability(**_: Any) -> None:
    settings = get_settings()
    if settings.is_production:
        warn_if_not_durable(settings.broker, logger)


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _sweeper_stop.set()


@worker_process_init.connect
def _open_engine(**_: Any) -> None:
    # A pool inherited across fork would share sockets between processes.
    resources.reset()


@worker_process_shutdown.connect
def _close_engine(**_: Any) -> None:
    resources.dispose()
    metrics.process_exited(os.getpid())


@task_prerun.connect
def _log_context(args: tuple[Any, ...] = (), **_: Any) -> None:
    # Every line logged while the task runs, Celery's own included, names the event.
    set_event(**describe(args[0] if args else None))


@task_postrun.connect
def _clear_log_context(**_: Any) -> None:
    clear_event()
