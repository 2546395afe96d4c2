"""The schema the migrations build: named constraints exist and reject what they must."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from db.tables import metadata

NAMED_INDEXES = {
    "uniq_pipelines_is_default",
    "uniq_pipeline_stages_name",
    "uniq_pipeline_stages_order",
    "uniq_pipeline_stages_pipeline_id_id",
    "uniq_deals_contact_stage",
    "uniq_webhook_events_key",
    "uniq_contacts_email",
    "uniq_owners_email",
    "uniq_companies_domain",
    "uniq_pipelines_name",
    "uniq_dead_letters_event",
    "idx_activities_contact",
    "idx_activities_deal",
    "idx_dead_letters_status_reason",
}

NAMED_CONSTRAINTS = {
    ("pipeline_stages", "uniq_pipeline_stages_name", "u"),
    ("pipeline_stages", "uniq_pipeline_stages_order", "u"),
    ("pipeline_stages", "uniq_pipeline_stages_pipeline_id_id", "u"),
    ("pipeline_stages", "fk_pipeline_stages_pipeline", "f"),
    ("pipelines", "uniq_pipelines_name", "u"),
    ("deals", "uniq_deals_contact_stage", "u"),
    ("deals", "fk_deals_pipeline_stage", "f"),
    ("deals", "fk_deals_contact", "f"),
    ("deals", "fk_deals_company", "f"),
    ("deals", "fk_deals_owner", "f"),
    ("contacts", "fk_contacts_company", "f"),
    ("contacts", "fk_contacts_owner", "f"),
    ("activities", "fk_activities_contact", "f"),
    ("activities", "fk_activities_deal", "f"),
    ("webhook_events", "uniq_webhook_events_key", "u"),
    ("webhook_events", "ck_webhook_events_status", "c"),
    ("dead_letters", "uniq_dead_letters_event", "u"),
    ("dead_letters", "ck_dead_letters_status", "c"),
}


@pytest.fixture
def conn(superuser_engine: Engine) -> Iterator[Connection]:
    """A superuser connection whose work is rolled back after the test."""
    with superuser_engine.connect() as conn:
        transaction = conn.begin()
        try:
            yield conn
        finally:
            transaction.rollback()


def _id(conn: Connection, sql: str, **params: Any) -> UUID:
    value = conn.execute(text(sql + " RETURNING id"), params).scalar_one()
    assert isinstance(value, UUID)
    return value


def _pipeline(conn: Connection, name: str, *, is_default: bool = False) -> UUID:
    return _id(
        conn, "INSERT INTO pipelines (name, is_default) VALUES (:n, :d)", n=name, d=is_default
    )


def _stage(conn: Connection, pipeline_id: UUID, name: str, order_index: int) -> UUID:
    return _id(
        conn,
        "INSERT INTO pipeline_stages (pipeline_id, name, order_index) VALUES (:p, :n, :o)",
        p=pipeline_id,
        n=name,
        o=order_index,
    )


def _contact(conn: Connection, email: str) -> UUID:
    return _id(conn, "INSERT INTO contacts (email) VALUES (:e)", e=email)


def _deal(conn: Connection, contact_id: UUID, pipeline_id: UUID, stage_id: UUID) -> UUID:
    return _id(
        conn,
        "INSERT INTO deals (contact_id, pipeline_id, stage_id, title) VALUES (:c, :p, :s, 'Deal')",
        c=contact_id,
        p=pipeline_id,
        s=stage_id,
    )


def _assert_violates(conn: Connection, constraint: str, sql: str, **params: Any) -> None:
    with pytest.raises(IntegrityError) as caught, conn.begin_nested():
        conn.execute(text(sql), params)
    assert caught.value.orig is not None
    assert getattr(caught.value.orig.diag, "constraint_name", None) == constraint


def test_named_indexes_exist(conn: Connection) -> None:
    rows = conn.execute(
        text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    ).all()
    definitions = dict(rows)
    assert NAMED_INDEXES - set(definitions) == set()
    assert definitions["uniq_pipelines_is_default"].endswith("(is_default) WHERE is_default")
    assert "lower(email)" in definitions["uniq_contacts_email"]


def test_named_constraints_exist(conn: Connection) -> None:
    rows = conn.execute(
        text(
            "SELECT conrelid::regclass::text, conname, contype::text FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace"
        )
    ).all()
    assert NAMED_CONSTRAINTS - {tuple(row) for row in rows} == set()


def test_migrated_schema_matches_db_tables(conn: Connection) -> None:
    """The hand-written DDL and the SQLAlchemy tables the code queries describe one schema."""
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    with warnings.catch_warnings():
        # Alembic notes that it cannot compare expression indexes; their names are checked above.
        warnings.filterwarnings("ignore", message=".*expression.*", category=UserWarning)
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_deals_have_pipeline_and_stage_ids_and_no_stage_text(conn: Connection) -> None:
    columns = dict(
        conn.execute(
            text(
                "SELECT column_name, is_nullable FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = 'deals'"
            )
        ).all()
    )
    assert "stage" not in columns
    assert columns["pipeline_id"] == "NO"
    assert columns["stage_id"] == "NO"


def test_second_default_pipeline_is_rejected(conn: Connection) -> None:
    _assert_violates(
        conn,
        "uniq_pipelines_is_default",
        "INSERT INTO pipelines (name, is_default) VALUES ('Second default', true)",
    )


def test_non_default_pipelines_may_be_many(conn: Connection) -> None:
    _pipeline(conn, "Partners")
    _pipeline(conn, "Renewals")


def test_duplicate_stage_name_in_one_pipeline_is_rejected(conn: Connection) -> None:
    pipeline = _pipeline(conn, "Partners")
    _stage(conn, pipeline, "Intro", 0)
    _assert_violates(
        conn,
        "uniq_pipeline_stages_name",
        "INSERT INTO pipeline_stages (pipeline_id, name, order_index) VALUES (:p, 'Intro', 1)",
        p=pipeline,
    )


def test_duplicate_stage_order_in_one_pipeline_is_rejected(conn: Connection) -> None:
    pipeline = _pipeline(conn, "Partners")
    _stage(conn, pipeline, "Intro", 0)
    _assert_violates(
        conn,
        "uniq_pipeline_stages_order",
        "INSERT INTO pipeline_stages (pipeline_id, name, order_index) VALUES (:p, 'Call', 0)",
        p=pipeline,
    )


def test_same_stage_name_and_order_in_two_pipelines_are_allowed(conn: Connection) -> None:
    _stage(conn, _pipeline(conn, "Partners"), "Intro", 0)
    _stage(conn, _pipeline(conn, "Renewals"), "Intro", 0)


def test_second_deal_for_same_contact_and_stage_is_rejected(conn: Connection) -> None:
    pipeline = _pipeline(conn, "Partners")
    stage = _stage(conn, pipeline, "Intro", 0)
    contact = _contact(conn, "ada@example.org")
    _deal(conn, contact, pipeline, stage)
    _assert_violates(
        conn,
        "uniq_deals_contact_stage",
        "INSERT INTO deals (contact_id, pipeline_id, stage_id, title) VALUES (:c, :p, :s, 'Again')",
        c=contact,
        p=pipeline,
        s=stage,
    )


def test_contact_may_hold_deals_in_two_different_stages(conn: Connection) -> None:
    pipeline = _pipeline(conn, "Partners")
    contact = _contact(conn, "ada@example.org")
    first = _deal(conn, contact, pipeline, _stage(conn, pipeline, "Intro", 0))
    second = _deal(conn, contact, pipeline, _stage(conn, pipeline, "Call", 1))
    assert first != second


def test_deal_whose_stage_belongs_to_another_pipeline_is_rejected(conn: Connection) -> None:
    partners = _pipeline(conn, "Partners")
    renewals_stage = _stage(conn, _pipeline(conn, "Renewals"), "Intro", 0)
    contact = _contact(conn, "ada@example.org")
    _assert_violates(
        conn,
        "fk_deals_pipeline_stage",
        "INSERT INTO deals (contact_id, pipeline_id, stage_id, title) VALUES (:c, :p, :s, 'X')",
        c=contact,
        p=partners,
        s=renewals_stage,
    )


def test_contact_email_is_unique_case_insensitively(conn: Connection) -> None:
    _contact(conn, "Ada.Lovelace@Example.org")
    _assert_violates(
        conn,
        "uniq_contacts_email",
        "INSERT INTO contacts (email) VALUES ('ada.lovelace@example.ORG')",
    )


def test_same_webhook_delivery_key_is_rejected_per_provider(conn: Connection) -> None:
    insert = (
        "INSERT INTO webhook_events (id, provider, event_type, idempotency_key, payload,"
        " received_at) VALUES (gen_random_uuid(), :provider, 'reply_received', 'key-1', '{}',"
        " now())"
    )
    conn.execute(text(insert), {"provider": "instantly"})
    conn.execute(text(insert), {"provider": "calcom"})
    _assert_violates(conn, "uniq_webhook_events_key", insert, provider="instantly")


def test_unknown_event_status_is_rejected(conn: Connection) -> None:
    _assert_violates(
        conn,
        "ck_webhook_events_status",
        "INSERT INTO webhook_events (id, provider, event_type, idempotency_key, payload,"
        " received_at, status) VALUES (gen_random_uuid(), 'instantly', 'x', 'k', '{}', now(),"
        " 'lost')",
    )
