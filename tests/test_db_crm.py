"""db/crm.py under contention: two workers handling the same lead at the same moment."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from uuid import UUID

import pytest
from sqlalchemy import Connection, Engine, text

from db.crm import advance_deal, get_default_stage, upsert_contact

ROUNDS = 5


def _deal_id(conn: Connection, **kwargs: object) -> UUID:
    move = advance_deal(conn, **kwargs)  # type: ignore[arg-type]
    assert move is not None
    return move.deal_id


def _race(engine: Engine, calls: list[Callable[[Connection], UUID]]) -> list[UUID]:
    """Run each call in its own thread, transaction and app_user connection, all released
    together by a barrier; return what each returned."""
    barrier = threading.Barrier(len(calls), timeout=30)
    results: dict[int, UUID] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with engine.connect() as conn, conn.begin():
                # Connected and inside a transaction before the race starts.
                conn.execute(text("SELECT 1"))
                barrier.wait()
                results[index] = calls[index](conn)
        except BaseException as exc:  # reported to the test below, not lost in the thread
            barrier.abort()
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
    assert errors == []
    return [results[i] for i in range(len(calls))]


@pytest.mark.usefixtures("clean_db")
def test_concurrent_upserts_of_one_lead_give_one_contact_and_one_deal(
    app_engine: Engine, superuser_engine: Engine
) -> None:
    with app_engine.connect() as conn:
        stage = get_default_stage(conn)
    assert stage is not None

    for round_ in range(ROUNDS):
        spellings = [f"Race.Lead{round_}@Example.com", f"race.lead{round_}@example.COM"]
        contact_ids = _race(
            app_engine,
            [
                partial(upsert_contact, email=email, first_name="Race", source="instantly")
                for email in spellings
            ],
        )
        assert len(set(contact_ids)) == 1

        deal = partial(
            _deal_id,
            contact_id=contact_ids[0],
            stage_name="New",
            title="Reply",
            source="instantly",
        )
        deal_ids = _race(app_engine, [deal, deal])
        assert len(set(deal_ids)) == 1

    with superuser_engine.connect() as conn:
        contacts = conn.execute(
            text("SELECT count(*) FROM contacts WHERE lower(email) LIKE 'race.lead%@example.com'")
        ).scalar_one()
        deals = conn.execute(
            text("SELECT count(*) FROM deals WHERE stage_id = :s"), {"s": stage.stage_id}
        ).scalar_one()
    assert contacts == ROUNDS
    assert deals == ROUNDS
