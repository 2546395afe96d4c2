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

from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from common.envelope import QUEUE_NAME
from common.settings import get_settings
from worker import resources

settings = get_settings()

app = Celery("crm-worker")
app.conf.update(
    broker_url=settings.celery_broker_url,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": settings.broker_visibility_timeout,
        # How often a worker sweeps for messages whose holder died (kombu's default sweep is
        # ~100 s apart); a tenth of the visibility timeout, at most a minute.
        "unacked_restore_interval": min(60, max(1, settings.broker_visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
    },
    task_default_queue=QUEUE_NAME,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=settings.worker_concurrency,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    imports=["worker.tasks"],
)


@worker_process_init.connect
def _open_engine(**_: Any) -> None:
    # A pool inherited across fork would share sockets between processes.
    resources.reset()


@worker_process_shutdown.connect
def _close_engine(**_: Any) -> None:
    resources.dispose()
