"""Indexes for the console's pages: events newest first and by lead e-mail, dead letters by
group, by time and by lead e-mail. Running this again adds nothing; downgrade drops them.

Revision ID: 006_console_indexes
Revises: 005_admin_actions
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "006_console_indexes"
down_revision: str | None = "005_admin_actions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The lead's e-mail in an Instantly or Cal.com payload, lower-cased: the console's queries use
# these exact expressions (db/tables.py), which is what lets PostgreSQL use the indexes.
_EVENT_EMAIL = (
    "lower(coalesce(payload ->> 'lead_email', payload ->> 'email',"
    " payload #>> '{payload,attendees,0,email}'))"
)
_DEAD_LETTER_EMAIL = (
    "lower(coalesce(envelope #>> '{payload,lead_email}', envelope #>> '{payload,email}',"
    " envelope #>> '{payload,payload,attendees,0,email}'))"
)
INDEXES = {
    "idx_webhook_events_received": "webhook_events (received_at DESC, id DESC)",
    "idx_webhook_events_lead_email": f"webhook_events (({_EVENT_EMAIL}), received_at DESC)",
    "idx_dead_letters_groups": "dead_letters (status, provider, reason, error_class)",
    "idx_dead_letters_last_failed": "dead_letters (last_failed_at DESC)",
    "idx_dead_letters_lead_email": f"dead_letters (({_DEAD_LETTER_EMAIL}))",
}


def upgrade() -> None:
    for name, target in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
