"""The task the receiver's messages name. Delivery rules are declared here and in worker.app."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from common.envelope import TASK_NAME
from worker import resources
from worker.app import app
from worker.processing import parse_envelope, process

logger = logging.getLogger("crm.worker")


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def process_event(self: Task[Any, Any], envelope: dict[str, Any]) -> dict[str, Any]:
    parsed = parse_envelope(envelope)
    try:
        return process(
            resources.engine(), parsed, stages=resources.stages, attempts=self.request.retries + 1
        )
    except Exception:
        resources.stages.clear()
        raise
