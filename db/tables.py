"""Every table on one MetaData, every constraint and index named.

This mirrors what the Alembic revisions create; the migrations spell out their own DDL and never
import this module, so a later change here cannot rewrite history.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()


def _id() -> Column[object]:
    return Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid())


def _timestamps() -> tuple[Column[object], Column[object]]:
    return (
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


owners = Table(
    "owners",
    metadata,
    _id(),
    Column("email", Text, nullable=False),
    Column("name", Text),
    *_timestamps(),
    Index("uniq_owners_email", func.lower(text("email")), unique=True),
)

companies = Table(
    "companies",
    metadata,
    _id(),
    Column("name", Text, nullable=False),
    Column("domain", Text),
    *_timestamps(),
    Index("uniq_companies_domain", func.lower(text("domain")), unique=True),
)

contacts = Table(
    "contacts",
    metadata,
    _id(),
    Column("email", Text, nullable=False),
    Column("first_name", Text),
    Column("last_name", Text),
    Column(
        "company_id", UUID(as_uuid=True), ForeignKey("companies.id", name="fk_contacts_company")
    ),
    Column("owner_id", UUID(as_uuid=True), ForeignKey("owners.id", name="fk_contacts_owner")),
    Column("do_not_contact", Boolean, nullable=False, server_default=text("false")),
    Column("source", Text),
    *_timestamps(),
    Index("uniq_contacts_email", func.lower(text("email")), unique=True),
)

pipelines = Table(
    "pipelines",
    metadata,
    _id(),
    Column("name", Text, nullable=False),
    Column("is_default", Boolean, nullable=False, server_default=text("false")),
    *_timestamps(),
    UniqueConstraint("name", name="uniq_pipelines_name"),
    Index(
        "uniq_pipelines_is_default",
        "is_default",
        unique=True,
        postgresql_where=text("is_default"),
    ),
)

pipeline_stages = Table(
    "pipeline_stages",
    metadata,
    _id(),
    Column(
        "pipeline_id",
        UUID(as_uuid=True),
        ForeignKey("pipelines.id", name="fk_pipeline_stages_pipeline"),
        nullable=False,
    ),
    Column("name", Text, nullable=False),
    Column("order_index", Integer, nullable=False),
    *_timestamps(),
    UniqueConstraint("pipeline_id", "name", name="uniq_pipeline_stages_name"),
    UniqueConstraint("pipeline_id", "order_index", name="uniq_pipeline_stages_order"),
    # Target of the deals' composite foreign key: a deal's stage must be in the deal's pipeline.
    UniqueConstraint("pipeline_id", "id", name="uniq_pipeline_stages_pipeline_id_id"),
)

deals = Table(
    "deals",
    metadata,
    _id(),
    Column(
        "contact_id",
        UUID(as_uuid=True),
        ForeignKey("contacts.id", name="fk_deals_contact"),
        nullable=False,
    ),
    Column("company_id", UUID(as_uuid=True), ForeignKey("companies.id", name="fk_deals_company")),
    Column("owner_id", UUID(as_uuid=True), ForeignKey("owners.id", name="fk_deals_owner")),
    Column("pipeline_id", UUID(as_uuid=True), nullable=False),
    Column("stage_id", UUID(as_uuid=True), nullable=False),
    Column("title", Text, nullable=False),
    Column("amount", Numeric(14, 2)),
    Column("source", Text),
    *_timestamps(),
    ForeignKeyConstraint(
        ["pipeline_id", "stage_id"],
        ["pipeline_stages.pipeline_id", "pipeline_stages.id"],
        name="fk_deals_pipeline_stage",
    ),
    UniqueConstraint("contact_id", "stage_id", name="uniq_deals_contact_stage"),
)

activities = Table(
    "activities",
    metadata,
    _id(),
    Column("type", Text, nullable=False),
    Column(
        "contact_id", UUID(as_uuid=True), ForeignKey("contacts.id", name="fk_activities_contact")
    ),
    Column("deal_id", UUID(as_uuid=True), ForeignKey("deals.id", name="fk_activities_deal")),
    Column("event_id", UUID(as_uuid=True)),
    Column("subject", Text),
    Column("body", Text),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("occurred_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    *_timestamps(),
    Index("idx_activities_contact", "contact_id"),
    Index("idx_activities_deal", "deal_id"),
)

EVENT_STATUSES = ("queued", "processed", "ignored", "dead")
# An event in one of these has had its effects (or none were due): a later copy changes nothing.
FINAL_EVENT_STATUSES = ("processed", "ignored")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


webhook_events = Table(
    "webhook_events",
    metadata,
    # The event_id the receiver handed out: the same id names the event in Redis, the queue,
    # this table and the dead-letter store.
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("provider", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'queued'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("payload", JSONB, nullable=False),
    Column("result", JSONB),
    Column("error", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # When the sender says it happened (None: stored before 007, or the sender gave no time).
    Column("occurred_at", DateTime(timezone=True)),
    # The lead's e-mail as the sender's module reads it, lower-cased (None: none, or too long).
    Column("lead_email", String(320)),
    Column("processed_at", DateTime(timezone=True)),
    *_timestamps(),
    UniqueConstraint("provider", "idempotency_key", name="uniq_webhook_events_key"),
    CheckConstraint(_one_of("status", EVENT_STATUSES), name="ck_webhook_events_status"),
    Index("idx_webhook_events_received", text("received_at DESC"), text("id DESC")),
    Index("idx_webhook_events_lead", "lead_email", text("received_at DESC")),
)

DEAD_LETTER_STATUSES = ("open", "replayed", "discarded")

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("provider", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("envelope", JSONB, nullable=False),
    Column("lead_email", String(320)),
    Column("reason", Text, nullable=False),
    Column("error_class", Text, nullable=False),
    Column("error_message", Text, nullable=False),
    Column("traceback", Text),
    Column("attempts", Integer, nullable=False, server_default=text("1")),
    Column("first_failed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_failed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status", Text, nullable=False, server_default=text("'open'")),
    Column("replay_count", Integer, nullable=False, server_default=text("0")),
    Column("replayed_at", DateTime(timezone=True)),
    *_timestamps(),
    UniqueConstraint("event_id", name="uniq_dead_letters_event"),
    CheckConstraint(_one_of("status", DEAD_LETTER_STATUSES), name="ck_dead_letters_status"),
    Index("idx_dead_letters_status_reason", "status", "reason"),
    Index("idx_dead_letters_groups", "status", "provider", "reason", "error_class"),
    Index("idx_dead_letters_last_failed", text("last_failed_at DESC")),
    Index("idx_dead_letters_lead", "lead_email"),
)

ADMIN_ACTIONS = ("replay", "replay_matching", "discard")
ADMIN_SOURCES = ("console", "api", "cli")

# Every replay and discard, whoever asked and however: app_user may add rows and read them,
# never change or delete one (the audit trail).
admin_actions = Table(
    "admin_actions",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),  # the token's or session's sub; the CLI's user
    Column("role", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("dead_letter_ids", JSONB, nullable=False),
    Column("filters", JSONB),  # replay_matching: the filter it matched by
    Column("matched", Integer, nullable=False),
    Column("replayed", Integer, nullable=False, server_default=text("0")),
    Column("skipped", Integer, nullable=False, server_default=text("0")),
    Column("failed", Integer, nullable=False, server_default=text("0")),
    Column("outcome", Text, nullable=False),
    CheckConstraint(_one_of("action", ADMIN_ACTIONS), name="ck_admin_actions_action"),
    CheckConstraint(_one_of("source", ADMIN_SOURCES), name="ck_admin_actions_source"),
    Index("idx_admin_actions_created", "created_at"),
    Index("idx_admin_actions_ids", "dead_letter_ids", postgresql_using="gin"),
)
