"""Event ids are random UUIDs in canonical form: the database stores them as uuid, and
operators paste them into `GET /events/{id}`."""

from __future__ import annotations

import uuid

from common.envelope import new_event_id


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
