"""Prometheus metrics, named by the conventions (`_total`, `_seconds`, base units).

Celery's prefork children and uvicorn's worker processes each count for themselves; with
PROMETHEUS_MULTIPROC_DIR set (crm-run and the compose file set it) prometheus-client writes
their values to files there and `render` adds them up. Without it, one process counts alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common import senders
from common.envelope import describe

CONTENT_TYPE = CONTENT_TYPE_LATEST

DELIVERIES = Counter(
    "crm_webhook_deliveries_total",
    "Webhook deliveries by provider, outcome (accepted, duplicate, rejected, "
    "client_disconnected) and reason.",
    ["provider", "outcome", "reason"],
)
AUTH_REFUSALS = Counter(
    "crm_webhook_auth_refusals_total",
    "Deliveries answered 401, by provider and why (no_credentials, repeated_header, "
    "malformed_signature, not_bearer, no_secret_configured, no_secret_matched).",
    ["provider", "reason"],
)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_SECONDS = Histogram(
    "crm_webhook_request_duration_seconds",
    "Time to answer a webhook delivery, from the first byte read to the response.",
    ["provider"],
    buckets=REQUEST_BUCKETS,
)
EVENTS = Counter(
    "crm_events_processed_total",
    "Events the workers finished, by outcome (processed, ignored, duplicate, dead_lettered).",
    ["provider", "event_type", "outcome"],
)
RETRIES = Counter(
    "crm_event_retries_total",
    "Attempts that failed transiently and were scheduled again.",
    ["provider", "event_type"],
)
DEAD_LETTERS = Counter(
    "crm_dead_letters_total",
    "Events written to the dead-letter store, by reason.",
    ["provider", "reason"],
)
PARKED = Counter(
    "crm_events_parked_total",
    "Events PostgreSQL refused to store even as a minimal dead letter, parked in Redis.",
    ["provider", "event_type"],
)
PROCESSING_SECONDS = Histogram(
    "crm_event_processing_latency_seconds",
    "From the receiver's receipt of an event to the commit of its effects.",
    ["provider", "event_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)

BATCH_FALLBACKS = Counter(
    "crm_batch_fallbacks_total",
    "Batches that failed as a whole and were applied again in halves (one by one after a "
    "transient failure), by cause "
    "(deadlock, serialization_failure, lock_timeout, or the error's class).",
    ["cause"],
)
BATCH_EVENTS = Histogram(
    "crm_event_batch_size",
    "Events a worker committed in one transaction (more than one only under a backlog).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)


def metric_labels(envelope: object) -> tuple[str, str]:
    """(provider, event_type) label values for a queued envelope, unknown values folded."""
    fields = describe(envelope)
    return senders.metric_labels(fields["provider"], fields["event_type"])


class _Snapshot(Collector):
    """Gauges measured at scrape time (queue depth, open dead letters)."""

    def __init__(self, gauges: Mapping[str, tuple[str, float]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (documentation, value) in self._gauges.items():
            yield GaugeMetricFamily(name, documentation, value=value)


def _counters() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render(gauges: Mapping[str, tuple[str, float]] | None = None) -> bytes:
    """The exposition text: every process's counters, plus gauges measured just now."""
    text = generate_latest(_counters())
    if gauges:
        snapshot = CollectorRegistry(auto_describe=False)
        snapshot.register(_Snapshot(gauges))
        text += generate_latest(snapshot)
    return text


def process_exited(pid: int) -> None:
    """Forget a dead process's live gauges (counters stay summed in)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
