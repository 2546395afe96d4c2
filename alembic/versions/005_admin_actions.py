"""admin_actions: every replay and discard of a dead letter (console, JSON API, crm-dlq).

app_user may insert and read rows, never update or delete them; readonly reads them. Running
this again changes nothing; downgrade drops the table.

Revision ID: 005_admin_actions
Revises: 004_stages
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

from common.settings import Settings

revision: str = "005_admin_actions"
down_revision: str | None = "004_stages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _quote(name: str) -> str:
    return op.get_bind().dialect.identifier_preparer.quote(name)


def upgrade() -> None:
    settings = context.config.attributes["settings"]
    assert isinstance(settings, Settings)
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS admin_actions (
            id bigserial PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now(),
            actor text NOT NULL,
            role text NOT NULL,
            source text NOT NULL,
            action text NOT NULL,
            dead_letter_ids jsonb NOT NULL,
            filters jsonb,
            matched integer NOT NULL,
            replayed integer NOT NULL DEFAULT 0,
            skipped integer NOT NULL DEFAULT 0,
            failed integer NOT NULL DEFAULT 0,
            outcome text NOT NULL,
            CONSTRAINT ck_admin_actions_action
                CHECK (action IN ('replay', 'replay_matching', 'discard')),
            CONSTRAINT ck_admin_actions_source CHECK (source IN ('console', 'api', 'cli'))
        )
        """
    )
    op.execute("CREATE INDEX IF NOT EXISTS idx_admin_actions_created ON admin_actions (created_at)")
    # A dead letter's history: the actions whose ids contain it.
    op.execute(
        "CREATE INDEX IF NOT EXISTS idx_admin_actions_ids ON admin_actions USING gin (dead_letter_ids)"
    )
    user = _quote(settings.pg_user)
    op.execute(f"REVOKE ALL ON admin_actions FROM {user}")
    op.execute(f"GRANT SELECT, INSERT ON admin_actions TO {user}")
    sequence = op.get_bind().scalar(text("SELECT pg_get_serial_sequence('admin_actions', 'id')"))
    op.execute(f"GRANT USAGE ON SEQUENCE {sequence} TO {user}")
    op.execute("GRANT SELECT ON admin_actions TO readonly")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS admin_actions")
