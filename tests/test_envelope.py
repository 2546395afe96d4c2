"""Event ids are random UUIDs in canonical form: the database stores them as uuid, and
operators paste them into `GET /events/{id}`."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta

from common.envelope import new_event_id, utc_now_iso


def test_event_ids_are_canonical_random_uuids_and_do_not_repeat() -> None:
    ids = [new_event_id() for _ in range(20_000)]

    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # All four variant digits occur: the variant bits are set without biasing the rest.
    assert {event_id[19] for event_id in ids} == set("89ab")


def test_receive_times_are_now_in_utc_with_microseconds() -> None:
    before = datetime.now(UTC)
    stamps = [utc_now_iso() for _ in range(2_000)]
    after = datetime.now(UTC)

    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", stamp)
        assert before <= datetime.fromisoformat(stamp) <= after
    assert stamps == sorted(stamps)


def test_receive_times_follow_the_clock_across_seconds() -> None:
    first = datetime.fromisoformat(utc_now_iso())
    deadline = time.monotonic() + 3
    while datetime.fromisoformat(utc_now_iso()).second == first.second:
        assert time.monotonic() < deadline, "the formatted second never moved on"
    assert abs(datetime.fromisoformat(utc_now_iso()) - datetime.now(UTC)) < timedelta(seconds=1)
