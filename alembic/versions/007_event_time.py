"""webhook_events.occurred_at: when the sender says the event happened (Instantly's
`timestamp`, Cal.com's `createdAt`), beside `received_at`; an activity's `occurred_at` is this
time. NULL for events stored before this revision. Running this again changes nothing;
downgrade drops the column.

Revision ID: 007_event_time
Revises: 006_console_indexes
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "007_event_time"
down_revision: str | None = "006_console_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE webhook_events ADD COLUMN IF NOT EXISTS occurred_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE webhook_events DROP COLUMN IF EXISTS occurred_at")
