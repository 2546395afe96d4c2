"""Carrying out events' effects, set-based: each sender's module (common.senders) holds its
effects table and words its notes; `carry_out` is the one piece of code that carries out any
row of any table, for a whole batch at once — a batch of one is the single-event case.

What each event does is decided here, in the batch's order, from the rows as they were when
the batch began (its contacts locked); the database is then written with one statement per
table (db.batch). Several events of one lead in one batch are applied in their order: its deal
ends at the furthest stage any of them reaches (never backwards, never out of Won or Lost, never
a second deal), and every activity is kept."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from common.envelope import Envelope
from common.senders import SENDERS
from common.senders.fields import Lead, PayloadError
from common.senders.kit import Effect, Note
from db import batch
from worker.errors import ConfigError, InvalidPayload

# A high-volume event (sends, opens, clicks) with ENGAGEMENT_ACTIVITIES on: a note each.
ENGAGEMENT_NOTE = Effect(activity="system_note")
# Stages a deal never leaves: a late event cannot reopen a won or lost deal.
TERMINAL_STAGES = ("Won", "Lost")


def effect_for(
    envelope: Envelope, *, engagement_activities: bool, options: dict[str, Any]
) -> Effect | None:
    """What the event does; None for a type with no effect (stored as `ignored`)."""
    effect = SENDERS[envelope.provider].effect(envelope.event_type, envelope.payload, options)
    if effect is not None and effect.engagement and engagement_activities:
        return ENGAGEMENT_NOTE
    return effect


@dataclass(frozen=True)
class Planned:
    """An event whose effect touches the CRM, read by its sender's module."""

    envelope: Envelope
    effect: Effect
    lead: Lead
    note: Note
    occurred_at: datetime


def plan(envelope: Envelope, effect: Effect, occurred_at: datetime) -> Planned:
    """The sender's module reads the lead and words the note."""
    try:
        lead, note = SENDERS[envelope.provider].parse(envelope.event_type, envelope.payload)
    except PayloadError as exc:
        raise InvalidPayload(str(exc)) from None
    return Planned(envelope, effect, lead, note, occurred_at)


def _companies(planned: Sequence[Planned]) -> list[tuple[str, str]]:
    """(name, domain) per domain; the first event naming it names a new company."""
    names: dict[str, str] = {}
    for each in planned:
        if each.lead.domain is not None:
            names.setdefault(each.lead.domain, each.lead.company_name or each.lead.domain)
    return [(name, domain) for domain, name in names.items()]


def _contacts(planned: Sequence[Planned], company_ids: dict[str, UUID]) -> list[batch.ContactRow]:
    """One row per person (e-mail, case-insensitive): what the events, in order, would have
    filled in one after another — each field from the first event that has it."""
    rows: dict[str, batch.ContactRow] = {}
    for each in planned:
        lead = each.lead
        company = company_ids[lead.domain] if lead.domain is not None else None
        known = rows.get(lead.email.lower())
        if known is None:
            rows[lead.email.lower()] = batch.ContactRow(
                lead.email, lead.first_name, lead.last_name, company, each.envelope.provider
            )
        else:
            rows[lead.email.lower()] = replace(
                known,
                first_name=known.first_name or lead.first_name,
                last_name=known.last_name or lead.last_name,
                company_id=known.company_id or company,
            )
    return list(rows.values())


def carry_out(conn: Connection, planned: Sequence[Planned]) -> list[dict[str, Any]]:
    """Each event's result, in order, its rows written set-based inside the caller's
    transaction."""
    company_ids = batch.upsert_companies(conn, _companies(planned))
    contact_ids = batch.upsert_contacts(conn, _contacts(planned, company_ids))
    stages = batch.default_stages(conn) if any(each.effect.stage for each in planned) else {}
    with_deals = {
        contact_ids[each.lead.email.lower()]
        for each in planned
        if each.effect.stage is not None or (each.effect.activity and each.effect.on_deal)
    }
    deals = batch.current_deals(conn, sorted(with_deals))
    created: dict[UUID, batch.NewDeal] = {}
    moved: dict[UUID, UUID] = {}
    activities: list[batch.ActivityRow] = []
    do_not_contact: set[UUID] = set()
    results = []
    for each in planned:
        effect, note = each.effect, each.note
        contact_id = contact_ids[each.lead.email.lower()]
        company_id = company_ids[each.lead.domain] if each.lead.domain is not None else None
        deal_id: UUID | None = None
        stage: str | None = None
        if effect.stage is not None:
            target = stages.get(effect.stage)
            if target is None:
                raise ConfigError(f"no default pipeline with a stage named '{effect.stage}'")
            current = deals.get(contact_id)
            if current is None:
                deal_id, stage = uuid.uuid4(), effect.stage
                created[deal_id] = batch.NewDeal(
                    deal_id, contact_id, target, note.deal_title, company_id,
                    each.envelope.provider,
                )  # fmt: skip
            else:
                deal_id, stage = current
                if stages[stage].order < target.order and stage not in TERMINAL_STAGES:
                    stage = effect.stage
                    if deal_id in created:  # made by this batch: made in its final stage
                        created[deal_id] = replace(created[deal_id], stage=target)
                    else:
                        moved[deal_id] = target.stage_id
            deals[contact_id] = (deal_id, stage)
        elif effect.activity is not None and effect.on_deal:
            current = deals.get(contact_id)
            deal_id = current[0] if current else None
        if effect.do_not_contact:
            do_not_contact.add(contact_id)
        activity_id = None
        if effect.activity is not None:
            activity_id = uuid.uuid4()
            activities.append(
                batch.ActivityRow(
                    activity_id, effect.activity, contact_id, deal_id, note.subject, note.body,
                    {key: value for key, value in note.metadata.items() if value is not None},
                    UUID(each.envelope.event_id), each.occurred_at,
                )
            )  # fmt: skip
        done = result(
            each.envelope.event_type,
            contact_id=contact_id,
            deal_id=deal_id,
            stage=stage,
            activity_id=activity_id,
            do_not_contact=effect.do_not_contact,
        )
        if effect.step is not None:
            # The prototype's keys too, which its clients read.
            done |= {"step": effect.step, "system_activity_id": done["activity_id"]}
        results.append(done)
    batch.write_deals(conn, list(created.values()), sorted(moved.items()))
    batch.insert_activities(conn, activities)
    batch.mark_do_not_contact(conn, sorted(do_not_contact))
    return results


def result(
    effect: str,
    *,
    contact_id: UUID | None = None,
    deal_id: UUID | None = None,
    stage: str | None = None,
    activity_id: UUID | None = None,
    do_not_contact: bool = False,
) -> dict[str, Any]:
    """An event's `result`, with the same keys whatever the event did (None: not done), so a
    client of GET /events/{id} reads every event alike."""
    return {
        "effect": effect,
        "contact_id": str(contact_id) if contact_id else None,
        "deal_id": str(deal_id) if deal_id else None,
        "stage": stage,
        "activity_id": str(activity_id) if activity_id else None,
        "do_not_contact": do_not_contact or None,
    }
