"""The task the receiver's messages name. Its delivery policy lives in worker.delivery, the
work itself in worker.processing."""

from __future__ import annotations

from typing import Any

from common.queue import TASK_NAME
from worker.app import app
from worker.delivery import EventTask


@app.task(name=TASK_NAME, bind=True, base=EventTask)
def process_event(self: EventTask, envelope: dict[str, Any]) -> dict[str, Any]:
    return self.deliver(envelope)
