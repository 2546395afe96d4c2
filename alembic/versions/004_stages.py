"""The default pipeline's stages in order: New, Interested, Meeting Booked, Won, Lost.

Stages that already exist are kept where they are; each missing one is appended after the
pipeline's last stage, so the five keep their relative order. Running this again adds
nothing; downgrade removes the four stages this revision is about, where no deal uses them.

Revision ID: 004_stages
Revises: 003_seed
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "004_stages"
down_revision: str | None = "003_seed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 'New' belongs to 003_seed; this revision owns the other four.
STAGES = ("Interested", "Meeting Booked", "Won", "Lost")


def upgrade() -> None:
    for name in STAGES:
        op.execute(
            f"""
            INSERT INTO pipeline_stages (pipeline_id, name, order_index)
            SELECT p.id, '{name}',
                   (SELECT coalesce(max(s.order_index) + 1, 0) FROM pipeline_stages s
                    WHERE s.pipeline_id = p.id)
            FROM pipelines p WHERE p.is_default
            ON CONFLICT ON CONSTRAINT uniq_pipeline_stages_name DO NOTHING
            """  # noqa: S608 - names are the constants above
        )


def downgrade() -> None:
    names = ", ".join(f"'{name}'" for name in STAGES)
    op.execute(
        f"""
        DELETE FROM pipeline_stages s
        USING pipelines p
        WHERE s.pipeline_id = p.id AND p.is_default AND s.name IN ({names})
          AND NOT EXISTS (SELECT 1 FROM deals d WHERE d.stage_id = s.id)
        """  # noqa: S608 - names are the constants above
    )
