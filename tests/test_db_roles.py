"""What each role may do, checked by doing it as that role against the migrated database."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg2.errors
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import ProgrammingError

from common.settings import Settings
from db.engine import make_engine

TABLES = (
    "owners",
    "companies",
    "contacts",
    "pipelines",
    "pipeline_stages",
    "deals",
    "activities",
    "webhook_events",
    "dead_letters",
    "admin_actions",
)

# A row the role may not write, for each table app_user has no INSERT on.
READ_ONLY_FOR_APP_USER = {
    "owners": "INSERT INTO owners (email) VALUES ('o@example.org')",
    "pipelines": "INSERT INTO pipelines (name) VALUES ('Shadow')",
    "pipeline_stages": (
        "INSERT INTO pipeline_stages (pipeline_id, name, order_index)"
        " SELECT id, 'Shadow', 99 FROM pipelines WHERE is_default"
    ),
}


def _assert_denied(engine: Engine, sql: str) -> None:
    with engine.connect() as conn, pytest.raises(ProgrammingError) as caught:
        conn.execute(text(sql))
    assert isinstance(caught.value.orig, psycopg2.errors.InsufficientPrivilege), caught.value


@pytest.fixture
def app_conn(app_engine: Engine) -> Iterator[Connection]:
    """An app_user connection whose writes are rolled back after the test."""
    with app_engine.connect() as conn:
        transaction = conn.begin()
        try:
            yield conn
        finally:
            transaction.rollback()


@pytest.mark.parametrize("table", TABLES)
def test_app_user_can_select_every_table(app_engine: Engine, table: str) -> None:
    with app_engine.connect() as conn:
        conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608


def test_app_user_can_write_what_the_worker_writes(app_conn: Connection) -> None:
    """One processed event's worth of rows, inserted and updated the way the worker does."""
    default = app_conn.execute(
        text(
            "SELECT p.id, s.id FROM pipelines p JOIN pipeline_stages s ON s.pipeline_id = p.id"
            " WHERE p.is_default AND s.name = 'New'"
        )
    ).one()
    company = app_conn.execute(
        text("INSERT INTO companies (name, domain) VALUES ('Acme', 'acme.test') RETURNING id")
    ).scalar_one()
    contact = app_conn.execute(
        text("INSERT INTO contacts (email, company_id) VALUES ('a@acme.test', :c) RETURNING id"),
        {"c": company},
    ).scalar_one()
    deal = app_conn.execute(
        text(
            "INSERT INTO deals (contact_id, pipeline_id, stage_id, title)"
            " VALUES (:c, :p, :s, 'Reply') RETURNING id"
        ),
        {"c": contact, "p": default[0], "s": default[1]},
    ).scalar_one()
    app_conn.execute(
        text("INSERT INTO activities (type, contact_id, deal_id) VALUES ('system_note', :c, :d)"),
        {"c": contact, "d": deal},
    )
    event = app_conn.execute(
        text(
            "INSERT INTO webhook_events (id, provider, event_type, idempotency_key, payload,"
            " received_at) VALUES (gen_random_uuid(), 'instantly', 'reply_received', 'k', '{}',"
            " now()) RETURNING id"
        )
    ).scalar_one()
    # dead_letters.id comes from a sequence: this also proves USAGE on it.
    app_conn.execute(
        text(
            "INSERT INTO dead_letters (event_id, provider, event_type, envelope, reason,"
            " error_class, error_message) VALUES (:e, 'instantly', 'reply_received', '{}',"
            " 'retries_exhausted', 'OperationalError', 'db down')"
        ),
        {"e": event},
    )
    for table in ("companies", "contacts", "deals", "webhook_events", "dead_letters"):
        updated = app_conn.execute(text(f"UPDATE {table} SET updated_at = now()"))  # noqa: S608
        assert updated.rowcount >= 1


@pytest.mark.parametrize("table", TABLES)
def test_app_user_cannot_delete(app_engine: Engine, table: str) -> None:
    _assert_denied(app_engine, f"DELETE FROM {table}")  # noqa: S608


@pytest.mark.parametrize("table", TABLES)
def test_app_user_cannot_truncate(app_engine: Engine, table: str) -> None:
    _assert_denied(app_engine, f"TRUNCATE {table}")


@pytest.mark.parametrize("table", sorted(READ_ONLY_FOR_APP_USER))
def test_app_user_cannot_insert_into_reference_tables(app_engine: Engine, table: str) -> None:
    _assert_denied(app_engine, READ_ONLY_FOR_APP_USER[table])


def test_app_user_records_admin_actions_and_reads_them_but_never_changes_one(
    app_conn: Connection, app_engine: Engine
) -> None:
    app_conn.execute(
        text(
            "INSERT INTO admin_actions (actor, role, source, action, dead_letter_ids, matched,"
            " outcome) VALUES ('ops', 'admin', 'console', 'replay', '[1]', 1, 'ok')"
        )
    )
    assert app_conn.execute(text("SELECT count(*) FROM admin_actions")).scalar_one() >= 1
    _assert_denied(app_engine, "UPDATE admin_actions SET outcome = 'forged'")


@pytest.mark.parametrize(
    "table", ["owners", "pipelines", "pipeline_stages", "activities", "admin_actions"]
)
def test_app_user_cannot_update_where_not_granted(app_engine: Engine, table: str) -> None:
    _assert_denied(app_engine, f"UPDATE {table} SET created_at = now()")  # noqa: S608


def test_app_user_cannot_create_a_table(app_engine: Engine) -> None:
    _assert_denied(app_engine, "CREATE TABLE public.intruder (id int)")


def test_app_user_cannot_alter_a_table(app_engine: Engine) -> None:
    _assert_denied(app_engine, "ALTER TABLE contacts ADD COLUMN intruder text")


@pytest.mark.parametrize("table", [*TABLES, "alembic_version"])
def test_readonly_can_select_every_table(readonly_engine: Engine, table: str) -> None:
    with readonly_engine.connect() as conn:
        conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO contacts (email) VALUES ('r@example.org')",
        "INSERT INTO pipelines (name) VALUES ('Shadow')",
        "UPDATE deals SET title = 'x'",
        "DELETE FROM webhook_events",
        "CREATE TABLE public.intruder (id int)",
    ],
)
def test_readonly_cannot_write(readonly_engine: Engine, sql: str) -> None:
    _assert_denied(readonly_engine, sql)


def test_readonly_can_read_a_table_app_admin_creates_later(
    settings: Settings, readonly_engine: Engine
) -> None:
    table = f"later_{secrets.token_hex(4)}"
    admin = make_engine(settings.pg_url(admin=True), pool_size=1)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} (note text)"))
            conn.execute(text(f"INSERT INTO {table} VALUES ('visible')"))  # noqa: S608
        with readonly_engine.connect() as conn:
            assert conn.execute(text(f"SELECT note FROM {table}")).scalar_one() == "visible"  # noqa: S608
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        admin.dispose()
