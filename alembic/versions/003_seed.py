"""Seed the default pipeline and its 'New' stage; demo rows outside production.

The default pipeline 'Sales' with its 'New' stage, which the worker files deals under; outside
production also a demo owner, company, contact and deal to click through.

Every insert is keyed on a named unique constraint or index, so running this again adds nothing.

Revision ID: 003_seed
Revises: 002_policies
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

from common.settings import Settings

revision: str = "003_seed"
down_revision: str | None = "002_policies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Demo rows are found again on downgrade by these keys: the demo owner/contact e-mails, the
# example.com domain and source 'seed' on the contact and the deal.


def _is_production() -> bool:
    settings = context.config.attributes["settings"]
    assert isinstance(settings, Settings)
    return settings.is_production


def upgrade() -> None:
    # A database adopted from the prototype may already have a default pipeline, or a 'Sales'
    # that is not the default: the stage goes into whichever pipeline is the default.
    op.execute(
        """
        UPDATE pipelines SET is_default = true
        WHERE name = 'Sales' AND NOT EXISTS (SELECT 1 FROM pipelines WHERE is_default)
        """
    )
    op.execute(
        "INSERT INTO pipelines (name, is_default) VALUES ('Sales', true) ON CONFLICT DO NOTHING"
    )
    # 'New' goes first, unless adopted legacy stages already hold position 0.
    op.execute(
        """
        INSERT INTO pipeline_stages (pipeline_id, name, order_index)
        SELECT p.id, 'New',
               CASE WHEN EXISTS (SELECT 1 FROM pipeline_stages s
                                 WHERE s.pipeline_id = p.id AND s.order_index = 0)
                    THEN (SELECT max(order_index) + 1 FROM pipeline_stages s
                          WHERE s.pipeline_id = p.id)
                    ELSE 0 END
        FROM pipelines p WHERE p.is_default
        ON CONFLICT ON CONSTRAINT uniq_pipeline_stages_name DO NOTHING
        """
    )
    if _is_production():
        return
    op.execute(
        """
        INSERT INTO owners (email, name) VALUES ('demo.owner@example.com', 'Demo Owner')
        ON CONFLICT ((lower(email))) DO NOTHING
        """
    )
    op.execute(
        """
        INSERT INTO companies (name, domain) VALUES ('Demo Company', 'example.com')
        ON CONFLICT ((lower(domain))) DO NOTHING
        """
    )
    op.execute(
        """
        INSERT INTO contacts (email, first_name, last_name, company_id, owner_id, source)
        SELECT 'demo.contact@example.com', 'Demo', 'Contact',
               (SELECT id FROM companies WHERE lower(domain) = 'example.com'),
               (SELECT id FROM owners WHERE lower(email) = 'demo.owner@example.com'),
               'seed'
        ON CONFLICT ((lower(email))) DO NOTHING
        """
    )
    op.execute(
        """
        INSERT INTO deals (contact_id, company_id, owner_id, pipeline_id, stage_id, title, source)
        SELECT c.id, c.company_id, c.owner_id, s.pipeline_id, s.id, 'Demo deal', 'seed'
        FROM contacts c
        JOIN pipelines p ON p.is_default
        JOIN pipeline_stages s ON s.pipeline_id = p.id AND s.name = 'New'
        WHERE lower(c.email) = 'demo.contact@example.com' AND c.source = 'seed'
        ON CONFLICT ON CONSTRAINT uniq_deals_contact_stage DO NOTHING
        """
    )


def downgrade() -> None:
    # Demo rows go only while nothing else points at them; real data is never removed.
    op.execute(
        """
        DELETE FROM deals d
        USING contacts c
        WHERE d.contact_id = c.id AND d.source = 'seed'
          AND lower(c.email) = 'demo.contact@example.com' AND c.source = 'seed'
          AND NOT EXISTS (SELECT 1 FROM activities a WHERE a.deal_id = d.id)
        """
    )
    op.execute(
        """
        DELETE FROM contacts c
        WHERE lower(c.email) = 'demo.contact@example.com' AND c.source = 'seed'
          AND NOT EXISTS (SELECT 1 FROM deals WHERE contact_id = c.id)
          AND NOT EXISTS (SELECT 1 FROM activities WHERE contact_id = c.id)
        """
    )
    op.execute(
        """
        DELETE FROM companies co
        WHERE lower(co.domain) = 'example.com'
          AND NOT EXISTS (SELECT 1 FROM contacts WHERE company_id = co.id)
          AND NOT EXISTS (SELECT 1 FROM deals WHERE company_id = co.id)
        """
    )
    op.execute(
        """
        DELETE FROM owners o
        WHERE lower(o.email) = 'demo.owner@example.com'
          AND NOT EXISTS (SELECT 1 FROM contacts WHERE owner_id = o.id)
          AND NOT EXISTS (SELECT 1 FROM deals WHERE owner_id = o.id)
        """
    )
    op.execute(
        """
        DELETE FROM pipeline_stages s
        USING pipelines p
        WHERE s.pipeline_id = p.id AND p.name = 'Sales' AND s.name = 'New'
          AND NOT EXISTS (SELECT 1 FROM deals WHERE stage_id = s.id)
        """
    )
    op.execute(
        """
        DELETE FROM pipelines p
        WHERE p.name = 'Sales'
          AND NOT EXISTS (SELECT 1 FROM pipeline_stages WHERE pipeline_id = p.id)
        """
    )
