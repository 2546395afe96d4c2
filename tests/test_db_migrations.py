"""The migrations and `crm-db` on scratch databases: reversible, re-runnable, seeding by
environment, adopting the prototype's tables, and failing in one clear line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, pool, text

from cli.ports import free_port
from cli.run import main as run_main
from common.settings import Settings, load_settings
from db.cli import (
    alembic_config,
    downgrade,
    main,
    may_create_database,
    migrate,
    superuser_url,
)

MakeDatabase = Callable[..., Settings]

TABLES = {
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
}

SEEDED_STAGES = [
    ("Sales", True, name, index)
    for index, name in enumerate(["New", "Interested", "Meeting Booked", "Won", "Lost"])
]

PRODUCTION = {
    "APP_ENV": "production",
    "JWT_SECRET": "Zq4mW8rT1vX7nB3kL9pS2dF6hJ0gY5cE",
    "PG_PASSWORD": "Vn7Qe2Lr9Tx4Mb8Kc1Wz",
    "PG_ADMIN_PASSWORD": "Hs3Jd8Pf1Ga6Ry0Ut5Io",
    "PG_READONLY_PASSWORD": "Rb4Nc8Vm2Xk6Lq0Wt3Ez",
    "HMAC_SHARED_SECRET_INSTANTLY": "Kf82hsQm1Lz0Xc7Vb4Nw",
    "HMAC_SHARED_SECRET_CALCOM": "Pt5Yr9Ue3Wq7Io1As6Df",
}


@pytest.fixture
def engine_for() -> Iterator[Callable[[Settings], Engine]]:
    """Superuser engines on scratch databases, disposed after the test."""
    made: list[Engine] = []

    def make(settings: Settings) -> Engine:
        engine = create_engine(
            superuser_url(settings, database=settings.pg_database), poolclass=pool.NullPool
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        return {row[0] for row in rows}


def _counts(engine: Engine) -> dict[str, int]:
    """Rows per table, for the tables the database has at its revision."""
    present = _tables(engine)
    with engine.connect() as conn:
        return {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
            for table in sorted(TABLES & present)
        }


def _seed(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.name, p.is_default, s.name, s.order_index FROM pipelines p"
                " JOIN pipeline_stages s ON s.pipeline_id = p.id ORDER BY p.name, s.order_index"
            )
        )
        return [tuple(row) for row in rows]


def test_upgrade_downgrade_base_upgrade(
    scratch_database: MakeDatabase, engine_for: Callable[[Settings], Engine]
) -> None:
    settings = scratch_database()
    engine = engine_for(settings)

    migrate(settings)
    assert _tables(engine) == TABLES | {"alembic_version"}

    downgrade(settings, "base")
    assert _tables(engine) == {"alembic_version"}

    migrate(settings)
    assert _tables(engine) == TABLES | {"alembic_version"}
    assert _seed(engine) == SEEDED_STAGES


def test_every_revision_run_again_on_a_migrated_database_adds_nothing(
    scratch_database: MakeDatabase, engine_for: Callable[[Settings], Engine]
) -> None:
    settings = scratch_database()
    engine = engine_for(settings)
    migrate(settings)
    before = _counts(engine)
    assert before["deals"] == 1  # the demo deal, outside production

    for start in ("base", "002_policies", "002_policies"):
        command.stamp(alembic_config(settings), start)
        migrate(settings)
        assert _counts(engine) == before
        assert _seed(engine) == SEEDED_STAGES


def test_lead_email_column_is_filled_for_rows_stored_before_it(
    scratch_database: MakeDatabase, engine_for: Callable[[Settings], Engine]
) -> None:
    """008 fills the new column from where the two senders of the time kept the address,
    lower-cased; an address too long for the column stays NULL; downgrade drops the column."""
    settings = scratch_database()
    engine = engine_for(settings)
    migrate(settings, "007_event_time")
    payloads = {
        "reply": {"lead_email": "Ada@Example.com"},
        "plain": {"email": "grace@example.com"},
        "booking": {"payload": {"attendees": [{"email": "Linus@Example.org"}]}},
        "long": {"lead_email": "x" * 400 + "@example.com"},
        "none": {"event_type": "campaign_completed"},
    }
    with engine.begin() as conn:
        for key, payload in payloads.items():
            conn.execute(
                text(
                    "INSERT INTO webhook_events (id, provider, event_type, idempotency_key,"
                    " payload, received_at) VALUES (gen_random_uuid(), 'p', 't', :key,"
                    " cast(:payload AS jsonb), now())"
                ),
                {"key": key, "payload": json.dumps(payload)},
            )
        conn.execute(
            text(
                "INSERT INTO dead_letters (event_id, provider, event_type, envelope, reason,"
                " error_class, error_message) VALUES (gen_random_uuid(), 'p', 't',"
                " cast(:envelope AS jsonb), 'invalid_payload', 'E', 'm')"
            ),
            {"envelope": json.dumps({"payload": {"email": "Grace@Example.com"}})},
        )
    migrate(settings)
    with engine.connect() as conn:
        filled = dict(
            conn.execute(text("SELECT idempotency_key, lead_email FROM webhook_events")).all()
        )
        letter = conn.execute(text("SELECT lead_email FROM dead_letters")).scalar_one()
    assert filled == {
        "reply": "ada@example.com",
        "plain": "grace@example.com",
        "booking": "linus@example.org",
        "long": None,
        "none": None,
    }
    assert letter == "grace@example.com"
    downgrade(settings, "007_event_time")
    with engine.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT count(*) FROM information_schema.columns"
                " WHERE column_name = 'lead_email' AND table_schema = 'public'"
            )
        ).scalar_one()
    assert columns == 0


def test_production_seed_has_the_pipeline_and_no_demo_rows(
    scratch_database: MakeDatabase, engine_for: Callable[[Settings], Engine]
) -> None:
    local = scratch_database()
    production = load_settings({**PRODUCTION, "PG_DATABASE": local.pg_database})
    # Connect with the local role passwords: the production ones above exist only on paper.
    command.upgrade(alembic_config(production, url=local.pg_url(admin=True)), "head")

    engine = engine_for(local)
    assert _seed(engine) == SEEDED_STAGES
    counts = _counts(engine)
    assert (counts["owners"], counts["companies"], counts["contacts"], counts["deals"]) == (
        0,
        0,
        0,
        0,
    )


def test_downgrading_the_seed_removes_demo_rows_but_not_real_ones(
    scratch_database: MakeDatabase, engine_for: Callable[[Settings], Engine]
) -> None:
    settings = scratch_database()
    engine = engine_for(settings)
    migrate(settings)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO contacts (email) VALUES ('real@customer.test')"))

    downgrade(settings, "002_policies")

    counts = _counts(engine)
    assert counts["contacts"] == 1
    assert (counts["owners"], counts["companies"], counts["deals"], counts["pipelines"]) == (
        0,
        0,
        0,
        0,
    )


def test_policies_name_the_missing_role_and_the_fix(scratch_database: MakeDatabase) -> None:
    settings = dataclasses.replace(scratch_database(), pg_user="crm_role_nobody_made")
    with pytest.raises(RuntimeError, match=r"crm_role_nobody_made.*crm-db bootstrap"):
        migrate(settings)


PROTOTYPE = """
CREATE TABLE contacts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text NOT NULL,
    first_name text,
    created_at timestamptz DEFAULT now()
);
CREATE TABLE deals (
    id uuid PRIMARY KEY,
    contact_id uuid REFERENCES contacts,
    title text,
    stage text NOT NULL,
    created_at timestamptz DEFAULT now()
);
CREATE TABLE activities (
    id uuid PRIMARY KEY,
    contact_id uuid,
    deal_id uuid,
    type text NOT NULL,
    body text
);
INSERT INTO contacts (id, email, first_name) VALUES
    ('00000000-0000-4000-8000-0000000000c1', 'ada@example.org', 'Ada'),
    ('00000000-0000-4000-8000-0000000000c2', 'Bob@Example.org', NULL),
    ('00000000-0000-4000-8000-0000000000c3', 'cy@example.org', 'Cy');
"""


@pytest.mark.parametrize(
    ("legacy_stages", "expected_stages"),
    [
        # The prototype already used 'New': it becomes the seeded stage, not a second one.
        # 004_stages then appends the missing ones of New, Interested, Meeting Booked, Won,
        # Lost, in that order, after what the prototype had.
        (
            ["Qualified", "New", "Won", "Qualified"],
            [
                ("Qualified", 0),
                ("New", 1),
                ("Won", 2),
                ("Interested", 3),
                ("Meeting Booked", 4),
                ("Lost", 5),
            ],
        ),
        (
            ["Qualified", "Won", "Lost", "Won"],
            [
                ("Qualified", 0),
                ("Won", 1),
                ("Lost", 2),
                ("New", 3),
                ("Interested", 4),
                ("Meeting Booked", 5),
            ],
        ),
    ],
)
def test_prototype_database_is_adopted_without_losing_rows(
    scratch_database: MakeDatabase,
    engine_for: Callable[[Settings], Engine],
    legacy_stages: list[str],
    expected_stages: list[tuple[str, int]],
) -> None:
    settings = scratch_database()
    contacts = ["c1", "c2", "c1", "c3"]  # c1 holds deals in two legacy stages
    admin = create_engine(settings.pg_url(admin=True), poolclass=pool.NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(text(PROTOTYPE))
            for n, (contact, stage) in enumerate(zip(contacts, legacy_stages, strict=True)):
                conn.execute(
                    text(
                        "INSERT INTO deals (id, contact_id, title, stage, created_at) VALUES"
                        " (:id, :contact, :title, :stage, now() + make_interval(secs => :n))"
                    ),
                    {
                        "id": f"00000000-0000-4000-8000-0000000000d{n}",
                        "contact": f"00000000-0000-4000-8000-0000000000{contact}",
                        "title": None if n == 2 else f"Deal {n}",
                        "stage": stage,
                        "n": n,
                    },
                )
            conn.execute(
                text(
                    "INSERT INTO activities (id, contact_id, deal_id, type, body) VALUES"
                    " (gen_random_uuid(), '00000000-0000-4000-8000-0000000000c1',"
                    "  '00000000-0000-4000-8000-0000000000d0', 'system_note', 'first reply')"
                )
            )
    finally:
        admin.dispose()

    migrate(settings)

    engine = engine_for(settings)
    with engine.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = 'deals'"
            )
        ).scalars()
        assert "stage" not in set(columns)
        stages = conn.execute(
            text(
                "SELECT s.name, s.order_index FROM pipeline_stages s"
                " JOIN pipelines p ON p.id = s.pipeline_id"
                " WHERE p.is_default AND p.name = 'Sales' ORDER BY s.order_index"
            )
        ).all()
        assert [tuple(row) for row in stages] == expected_stages
        deals = conn.execute(
            text(
                "SELECT d.id::text, s.name, d.title, d.pipeline_id = p.id FROM deals d"
                " JOIN pipeline_stages s ON s.id = d.stage_id"
                " JOIN pipelines p ON p.is_default"
                " WHERE d.source IS DISTINCT FROM 'seed' ORDER BY d.id"
            )
        ).all()
        assert [(row[1], row[3]) for row in deals] == [(stage, True) for stage in legacy_stages]
        assert deals[2][2] == "Untitled deal"
        fks = conn.execute(
            text(
                "SELECT conname FROM pg_constraint"
                " WHERE conrelid = 'deals'::regclass AND contype = 'f'"
            )
        ).scalars()
        # The prototype's unnamed foreign key was renamed, not doubled.
        assert set(fks) == {
            "fk_deals_contact",
            "fk_deals_company",
            "fk_deals_owner",
            "fk_deals_pipeline_stage",
        }
        activity = conn.execute(text("SELECT type, body, metadata FROM activities")).one()
        assert tuple(activity) == ("system_note", "first reply", {})
    counts = _counts(engine)
    # The three prototype contacts plus the demo contact; four prototype deals plus the demo one.
    assert (counts["contacts"], counts["deals"], counts["activities"]) == (4, 5, 1)


# crm-db as an operator runs it: through main() and as a subprocess from another directory.


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, stack_env: dict[str, str]) -> Callable[..., None]:
    """Make os.environ the test stack's environment plus the given variables."""

    def apply(**overrides: str) -> None:
        for name in set(os.environ) - set(stack_env):
            monkeypatch.delenv(name)
        for name, value in {**stack_env, **overrides}.items():
            monkeypatch.setenv(name, value)

    return apply


def test_cli_help_names_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("bootstrap", "migrate", "downgrade"))


@pytest.mark.parametrize("subcommand", ["bootstrap", "migrate"])
def test_cli_says_in_one_line_that_postgres_is_down_without_secrets(
    environ: Callable[..., None], capsys: pytest.CaptureFixture[str], subcommand: str
) -> None:
    port = free_port()
    environ(
        PG_PORT=str(port),
        PG_ADMIN_PASSWORD="admin-pw-never-printed",
        PG_SUPERUSER_URL=f"postgresql://postgres:su-pw-never-printed@127.0.0.1:{port}/postgres",
    )
    assert main([subcommand]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "PostgreSQL" in err
    assert f"127.0.0.1:{port}" in err
    assert "pg_ctlcluster" in err
    assert "docker compose up -d postgres redis" in err
    assert "never-printed" not in err
    assert "Traceback" not in err


def test_cli_reports_a_bad_setting_with_exit_code_2(
    environ: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    environ(PG_PORT="five-four-three-two")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "PG_PORT" in err
    assert "five-four" not in err


def test_cli_bootstrap_again_keeps_everything(
    environ: Callable[..., None], capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    environ()
    assert main(["bootstrap"]) == 0
    out = capsys.readouterr().out
    assert "role app_admin: kept" in out
    assert "role app_user: kept" in out
    assert "role readonly: kept" in out
    assert f"database {settings.pg_database}: kept" in out


def test_crm_db_migrate_works_from_any_directory(stack_env: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "db.cli", "migrate"],
        cwd=tmp_path,
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "crm-db: already at 008_lead_email; nothing to do" in result.stdout


def test_crm_db_migrate_says_where_it_went(
    environ: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    scratch_database: MakeDatabase,
) -> None:
    settings = scratch_database()
    environ(PG_DATABASE=settings.pg_database)
    assert main(["migrate", "--revision", "002_policies"]) == 0
    assert "crm-db: migrated from an empty database to 002_policies" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert "crm-db: migrated from 002_policies to 008_lead_email" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert "crm-db: already at 008_lead_email; nothing to do" in capsys.readouterr().out


def test_bootstrap_says_where_it_connects(
    environ: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    environ()
    assert main(["bootstrap"]) == 0
    assert "bootstrap: as postgres on 127.0.0.1:5432 (PG_SUPERUSER_URL)" in capsys.readouterr().out


def _database_exists(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        return found.first() is not None


def test_a_misspelt_database_is_refused_not_created(
    environ: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    superuser_engine: Engine,
) -> None:
    typo = f"crn_{uuid.uuid4().hex[:8]}"
    environ(APP_ENV="development", PG_DATABASE=typo)
    assert main(["bootstrap"]) == 1
    said = capsys.readouterr().err
    assert f"database '{typo}' does not exist" in said
    assert "crm-db bootstrap --create-database" in said
    assert not _database_exists(superuser_engine, typo)
    # crm-run (what make run runs) stops at the same line, before starting anything.
    assert run_main(["--workers", "1"]) == 1
    assert f"database '{typo}' does not exist" in capsys.readouterr().err
    assert not _database_exists(superuser_engine, typo)

    assert main(["bootstrap", "--create-database"]) == 0
    try:
        assert _database_exists(superuser_engine, typo)
    finally:
        with superuser_engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text(f'DROP DATABASE IF EXISTS "{typo}"')
            )


def test_only_the_development_default_is_created_unasked() -> None:
    assert may_create_database(load_settings({}))
    assert not may_create_database(load_settings({"PG_DATABASE": "crn"}))
    assert not may_create_database(load_settings({"APP_ENV": "test"}))
