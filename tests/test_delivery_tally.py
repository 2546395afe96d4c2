"""The receiver tallies deliveries in plain Python and folds them into Prometheus in bulk: the
series must read exactly as if every delivery had been counted and observed on its own."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from common import metrics
from ingest.metrics import DeliveryTally

# Every bucket edge exactly, either side of it, zero, and past the last bound (+Inf).
DURATIONS = [
    0.0, 0.0004, 0.001, 0.0011, 0.0025, 0.003, 0.005, 0.0099, 0.01, 0.02, 0.025,
    0.05, 0.07, 0.1, 0.2, 0.25, 0.5, 0.9, 1.0, 2.0, 2.5, 2.6, 30.0,
]  # fmt: skip


def _samples(histogram: Any, provider: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name.rsplit("_", 1)[-1], sample.labels.get("le", "")): sample.value
        for family in histogram.collect()
        for sample in family.samples
        if sample.labels.get("provider") == provider and not sample.name.endswith("_created")
    }


def _deliveries(outcome: str, reason: str) -> float:
    child = metrics.DELIVERIES.labels("calcom", outcome, reason)
    return float(child._value.get())


def test_a_fold_reads_as_one_observe_per_delivery() -> None:
    reference = Histogram(
        "reference_seconds",
        "reference",
        ["provider"],
        buckets=metrics.REQUEST_BUCKETS,
        registry=CollectorRegistry(),
    )
    for seconds in DURATIONS:
        reference.labels("calcom").observe(seconds)
    tally = DeliveryTally()
    before = _samples(metrics.REQUEST_SECONDS, "calcom")
    accepted_before = _deliveries("accepted", "")
    rejected_before = _deliveries("rejected", "unauthorized")

    for seconds in DURATIONS:
        tally.add("calcom", 202, seconds)
    tally.add("calcom", 401, 0.003)
    assert _samples(metrics.REQUEST_SECONDS, "calcom") == before, "nothing shows before a fold"
    tally.fold()

    after = _samples(metrics.REQUEST_SECONDS, "calcom")
    expected = _samples(reference, "calcom")
    expected[("bucket", "0.005")] += 1  # the 401's 3 ms, in every bucket from 0.005 up
    for bound in ("0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "+Inf"):
        expected[("bucket", bound)] += 1
    expected[("count", "")] += 1
    expected[("sum", "")] += 0.003
    assert set(after) == set(expected)
    for key, value in expected.items():
        assert abs(after[key] - before.get(key, 0.0) - value) < 1e-9, key
    assert _deliveries("accepted", "") - accepted_before == len(DURATIONS)
    assert _deliveries("rejected", "unauthorized") - rejected_before == 1


def test_a_second_fold_adds_only_what_came_since() -> None:
    tally = DeliveryTally()
    tally.add("calcom", 409, 0.002)
    tally.fold()
    before = _deliveries("duplicate", "")
    tally.fold()
    assert _deliveries("duplicate", "") == before
    tally.add("calcom", 409, 0.002)
    tally.fold()
    assert _deliveries("duplicate", "") == before + 1
