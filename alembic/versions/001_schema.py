"""CRM schema: every table, column, constraint and index of db/tables.py, spelled out.

Idempotent and adopting: each table is created if missing, then every column is added if
missing, so the Step E prototype's tables are taken over in place. Its `deals.stage` text column
becomes a stage of the default pipeline, and every deal keeps its row.

Revision ID: 001_schema
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from alembic import op

revision: str = "001_schema"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class Col(NamedTuple):
    name: str
    type: str
    not_null: bool = False
    default: str | None = None
    # What an adopted row with NULL here gets before NOT NULL is set, when there is no default.
    backfill: str | None = None


_ID = Col("id", "uuid", True, "gen_random_uuid()")
_TIMESTAMPS = (
    Col("created_at", "timestamptz", True, "now()"),
    Col("updated_at", "timestamptz", True, "now()"),
)

# Dependency order: a table comes after every table it references.
TABLES: dict[str, tuple[str, tuple[Col, ...]]] = {
    "owners": (
        "id uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        (_ID, Col("email", "text", True), Col("name", "text"), *_TIMESTAMPS),
    ),
    "companies": (
        "id uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        (_ID, Col("name", "text", True), Col("domain", "text"), *_TIMESTAMPS),
    ),
    "contacts": (
        "id uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        (
            _ID,
            Col("email", "text", True),
            Col("first_name", "text"),
            Col("last_name", "text"),
            Col("company_id", "uuid"),
            Col("owner_id", "uuid"),
            Col("do_not_contact", "boolean", True, "false"),
            Col("source", "text"),
            *_TIMESTAMPS,
        ),
    ),
    "pipelines": (
        "id uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        (_ID, Col("name", "text", True), Col("is_default", "boolean", True, "false"), *_TIMESTAMPS),
    ),
    "pipeline_stages": (
        "id uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        (
            _ID,
            Col("pipeline_id", "uuid", True),
            Col("name", "text", True),
            Col("order_index", "integer", True),
            *_TIMESTAMPS,
        ),
    ),
    "deals": (
        "id uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        (
            _ID,
            Col("contact_id", "uuid", True),
            Col("company_id", "uuid"),
            Col("owner_id", "uuid"),
            # Filled from the legacy `stage` column by _ADOPT_LEGACY_STAGE before NOT NULL.
            Col("pipeline_id", "uuid", True),
            Col("stage_id", "uuid", True),
            Col("title", "text", True, backfill="'Untitled deal'"),
            Col("amount", "numeric(14,2)"),
            Col("source", "text"),
            *_TIMESTAMPS,
        ),
    ),
    "activities": (
        "id uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        (
            _ID,
            Col("type", "text", True),
            Col("contact_id", "uuid"),
            Col("deal_id", "uuid"),
            Col("event_id", "uuid"),
            Col("subject", "text"),
            Col("body", "text"),
            Col("metadata", "jsonb", True, "'{}'::jsonb"),
            Col("occurred_at", "timestamptz", True, "now()"),
            *_TIMESTAMPS,
        ),
    ),
    "webhook_events": (
        # No default: the id is the event_id the receiver handed out.
        "id uuid PRIMARY KEY",
        (
            Col("provider", "text", True),
            Col("event_type", "text", True),
            Col("idempotency_key", "text", True),
            Col("status", "text", True, "'queued'"),
            Col("attempts", "integer", True, "0"),
            Col("payload", "jsonb", True),
            Col("result", "jsonb"),
            Col("error", "text"),
            Col("received_at", "timestamptz", True),
            Col("processed_at", "timestamptz"),
            *_TIMESTAMPS,
        ),
    ),
    "dead_letters": (
        "id bigserial PRIMARY KEY",
        (
            Col("event_id", "uuid", True),
            Col("provider", "text", True),
            Col("event_type", "text", True),
            Col("envelope", "jsonb", True),
            Col("reason", "text", True),
            Col("error_class", "text", True),
            Col("error_message", "text", True),
            Col("traceback", "text"),
            Col("attempts", "integer", True, "1"),
            Col("first_failed_at", "timestamptz", True, "now()"),
            Col("last_failed_at", "timestamptz", True, "now()"),
            Col("status", "text", True, "'open'"),
            Col("replay_count", "integer", True, "0"),
            Col("replayed_at", "timestamptz"),
            *_TIMESTAMPS,
        ),
    ),
}

# (table, name, definition). FOREIGN KEY and UNIQUE definitions are written the way
# pg_get_constraintdef prints them, so a prototype's unnamed twin is renamed, not duplicated.
CONSTRAINTS: tuple[tuple[str, str, str], ...] = (
    ("contacts", "fk_contacts_company", "FOREIGN KEY (company_id) REFERENCES companies(id)"),
    ("contacts", "fk_contacts_owner", "FOREIGN KEY (owner_id) REFERENCES owners(id)"),
    ("pipelines", "uniq_pipelines_name", "UNIQUE (name)"),
    (
        "pipeline_stages",
        "fk_pipeline_stages_pipeline",
        "FOREIGN KEY (pipeline_id) REFERENCES pipelines(id)",
    ),
    ("pipeline_stages", "uniq_pipeline_stages_name", "UNIQUE (pipeline_id, name)"),
    ("pipeline_stages", "uniq_pipeline_stages_order", "UNIQUE (pipeline_id, order_index)"),
    # Target of the deals' composite foreign key: a deal's stage must be in the deal's pipeline.
    ("pipeline_stages", "uniq_pipeline_stages_pipeline_id_id", "UNIQUE (pipeline_id, id)"),
    ("deals", "fk_deals_contact", "FOREIGN KEY (contact_id) REFERENCES contacts(id)"),
    ("deals", "fk_deals_company", "FOREIGN KEY (company_id) REFERENCES companies(id)"),
    ("deals", "fk_deals_owner", "FOREIGN KEY (owner_id) REFERENCES owners(id)"),
    (
        "deals",
        "fk_deals_pipeline_stage",
        "FOREIGN KEY (pipeline_id, stage_id) REFERENCES pipeline_stages(pipeline_id, id)",
    ),
    ("deals", "uniq_deals_contact_stage", "UNIQUE (contact_id, stage_id)"),
    ("activities", "fk_activities_contact", "FOREIGN KEY (contact_id) REFERENCES contacts(id)"),
    ("activities", "fk_activities_deal", "FOREIGN KEY (deal_id) REFERENCES deals(id)"),
    ("webhook_events", "uniq_webhook_events_key", "UNIQUE (provider, idempotency_key)"),
    (
        "webhook_events",
        "ck_webhook_events_status",
        "CHECK (status IN ('queued', 'processed', 'ignored', 'dead'))",
    ),
    ("dead_letters", "uniq_dead_letters_event", "UNIQUE (event_id)"),
    (
        "dead_letters",
        "ck_dead_letters_status",
        "CHECK (status IN ('open', 'replayed', 'discarded'))",
    ),
)

INDEXES: tuple[str, ...] = (
    "CREATE UNIQUE INDEX IF NOT EXISTS uniq_owners_email ON owners (lower(email))",
    "CREATE UNIQUE INDEX IF NOT EXISTS uniq_companies_domain ON companies (lower(domain))",
    "CREATE UNIQUE INDEX IF NOT EXISTS uniq_contacts_email ON contacts (lower(email))",
    "CREATE UNIQUE INDEX IF NOT EXISTS uniq_pipelines_is_default ON pipelines (is_default) WHERE is_default",
    "CREATE INDEX IF NOT EXISTS idx_activities_contact ON activities (contact_id)",
    "CREATE INDEX IF NOT EXISTS idx_activities_deal ON activities (deal_id)",
    "CREATE INDEX IF NOT EXISTS idx_dead_letters_status_reason ON dead_letters (status, reason)",
)

# The prototype kept the stage as free text on the deal. Each distinct name becomes a stage of
# the default pipeline (after any stages it already has, in order of first use), the deals point
# at it, and the text column goes.
_ADOPT_LEGACY_STAGE = """
DO $$
DECLARE
    default_pipeline uuid;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'deals' AND column_name = 'stage'
    ) THEN
        RETURN;
    END IF;

    UPDATE pipelines SET is_default = true
    WHERE name = 'Sales' AND NOT EXISTS (SELECT 1 FROM pipelines WHERE is_default);
    INSERT INTO pipelines (name, is_default)
    SELECT 'Sales', true WHERE NOT EXISTS (SELECT 1 FROM pipelines WHERE is_default);
    SELECT id INTO default_pipeline FROM pipelines WHERE is_default ORDER BY created_at LIMIT 1;

    INSERT INTO pipeline_stages (pipeline_id, name, order_index)
    SELECT default_pipeline,
           legacy.stage,
           (SELECT coalesce(max(order_index) + 1, 0) FROM pipeline_stages
            WHERE pipeline_id = default_pipeline)
             + row_number() OVER (ORDER BY legacy.first_used, legacy.stage) - 1
    FROM (
        SELECT stage, min(created_at) AS first_used FROM deals WHERE stage_id IS NULL GROUP BY stage
    ) AS legacy
    WHERE NOT EXISTS (
        SELECT 1 FROM pipeline_stages s
        WHERE s.pipeline_id = default_pipeline AND s.name = legacy.stage
    );

    UPDATE deals d SET pipeline_id = s.pipeline_id, stage_id = s.id
    FROM pipeline_stages s
    WHERE d.stage_id IS NULL AND s.pipeline_id = default_pipeline AND s.name = d.stage;

    ALTER TABLE deals DROP COLUMN stage;
END
$$
"""


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ensure_columns(table: str, create_id: str, columns: tuple[Col, ...]) -> None:
    op.execute(f"CREATE TABLE IF NOT EXISTS {table} ({create_id})")
    # Columns are added nullable; NOT NULL comes in _ensure_not_null once adopted rows are filled.
    actions = [f"ADD COLUMN IF NOT EXISTS {c.name} {c.type}" for c in columns]
    actions += [f"ALTER COLUMN {c.name} SET DEFAULT {c.default}" for c in columns if c.default]
    op.execute(f"ALTER TABLE {table} " + ", ".join(actions))
    fills = [(c.name, c.default or c.backfill) for c in columns if c.not_null]
    fills = [(name, fill) for name, fill in fills if fill and fill != "gen_random_uuid()"]
    if fills:
        sets = ", ".join(f"{name} = coalesce({name}, {fill})" for name, fill in fills)
        nulls = " OR ".join(f"{name} IS NULL" for name, _ in fills)
        op.execute(f"UPDATE {table} SET {sets} WHERE {nulls}")  # noqa: S608 (identifiers above)


def _ensure_not_null(table: str, columns: tuple[Col, ...]) -> None:
    actions = [f"ALTER COLUMN {c.name} SET NOT NULL" for c in columns if c.not_null]
    op.execute(f"ALTER TABLE {table} " + ", ".join(actions))


def _ensure_constraint(table: str, name: str, definition: str) -> None:
    # Interpolated values are this module's constants, never input.
    op.execute(
        f"""
DO $$
DECLARE
    twin name;
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_constraint WHERE conrelid = '{table}'::regclass AND conname = '{name}'
    ) THEN
        RETURN;
    END IF;
    SELECT conname INTO twin FROM pg_constraint
    WHERE conrelid = '{table}'::regclass AND pg_get_constraintdef(oid) = {_literal(definition)}
    LIMIT 1;
    IF twin IS NOT NULL THEN
        EXECUTE format('ALTER TABLE {table} RENAME CONSTRAINT %I TO {name}', twin);
    ELSE
        ALTER TABLE {table} ADD CONSTRAINT {name} {definition};
    END IF;
END
$$
"""  # noqa: S608
    )


def upgrade() -> None:
    for table, (create_id, columns) in TABLES.items():
        _ensure_columns(table, create_id, columns)
    op.execute(_ADOPT_LEGACY_STAGE)
    for table, (_, columns) in TABLES.items():
        _ensure_not_null(table, columns)
    for table, name, definition in CONSTRAINTS:
        _ensure_constraint(table, name, definition)
    for statement in INDEXES:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS " + ", ".join(reversed(TABLES)))
