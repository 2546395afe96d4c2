"""A `lead_email` column on webhook_events and dead_letters, filled from the sender's own parser
(common.senders), lower-cased and at most 320 characters, and indexed for the console's search.
It replaces 006's expression indexes over two senders' payload paths, which no other sender's
payload matches. Existing rows are filled from those paths. Running this again changes nothing;
downgrade restores 006's indexes and drops the columns.

Revision ID: 008_lead_email
Revises: 007_event_time
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "008_lead_email"
down_revision: str | None = "007_event_time"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 006's expressions, frozen here: what rows stored before this revision are filled from.
_EVENT_EMAIL = (
    "lower(coalesce(payload ->> 'lead_email', payload ->> 'email',"
    " payload #>> '{payload,attendees,0,email}'))"
)
_DEAD_LETTER_EMAIL = (
    "lower(coalesce(envelope #>> '{payload,lead_email}', envelope #>> '{payload,email}',"
    " envelope #>> '{payload,payload,attendees,0,email}'))"
)
_BOUND = 320


def _fill(table: str, expression: str) -> None:
    # Our own identifiers and expressions above; no outside value reaches this text.
    statement = (
        f"UPDATE {table} SET lead_email = CASE WHEN length({expression}) <= {_BOUND}"  # noqa: S608
        f" THEN {expression} END WHERE lead_email IS NULL AND {expression} IS NOT NULL"
    )
    op.execute(statement)


def upgrade() -> None:
    for table in ("webhook_events", "dead_letters"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS lead_email varchar({_BOUND})")
    _fill("webhook_events", _EVENT_EMAIL)
    _fill("dead_letters", _DEAD_LETTER_EMAIL)
    op.execute("DROP INDEX IF EXISTS idx_webhook_events_lead_email")
    op.execute("DROP INDEX IF EXISTS idx_dead_letters_lead_email")
    op.execute(
        "CREATE INDEX IF NOT EXISTS idx_webhook_events_lead ON webhook_events"
        " (lead_email, received_at DESC)"
    )
    op.execute("CREATE INDEX IF NOT EXISTS idx_dead_letters_lead ON dead_letters (lead_email)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS idx_webhook_events_lead")
    op.execute("DROP INDEX IF EXISTS idx_dead_letters_lead")
    op.execute(
        "CREATE INDEX IF NOT EXISTS idx_webhook_events_lead_email ON webhook_events"
        f" (({_EVENT_EMAIL}), received_at DESC)"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS idx_dead_letters_lead_email ON dead_letters"
        f" (({_DEAD_LETTER_EMAIL}))"
    )
    for table in ("webhook_events", "dead_letters"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS lead_email")
