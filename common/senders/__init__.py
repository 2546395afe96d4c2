"""The registry of senders: every module of this package that declares a `SENDER` is one, found
by name, so adding a sender is adding its module (with its fixtures and tests). What the core
needs of a payload it asks through here: the lead's e-mail, the event's time, metric labels."""

from __future__ import annotations

import importlib
import pkgutil
from datetime import UTC, datetime, timedelta
from typing import Any

from common.senders.fields import MAX_LEAD_EMAIL_LENGTH
from common.senders.kit import Effect, Sender, value_at

# The package's own pieces, which declare no sender.
_HELPERS = frozenset({"kit", "fields", "__main__"})


def _discover() -> dict[str, Sender]:
    found: dict[str, Sender] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name in _HELPERS:
            continue
        declared = getattr(importlib.import_module(f"{__name__}.{module.name}"), "SENDER", None)
        if isinstance(declared, Sender):
            if declared.name in found:
                raise RuntimeError(f"two senders are named {declared.name!r}")
            found[declared.name] = declared
    # The primary sender first, then by name: the order of every list of senders shown.
    return dict(sorted(found.items(), key=lambda item: (not item[1].primary, item[0])))


SENDERS: dict[str, Sender] = _discover()
# The sender the service was first built for: what crm-smoke posts unless told otherwise.
PRIMARY = next(sender for sender in SENDERS.values() if sender.primary)

# What the receiver refuses before it queues anything, because a log line should not carry it.
MAX_EVENT_TYPE_LENGTH = 200


def lead_email(provider: str, payload: dict[str, Any]) -> str | None:
    """The lead's e-mail in a payload, lower-cased, where the sender's module says it is; None
    when none holds text, or it is longer than any address (the column is bounded)."""
    sender = SENDERS.get(provider)
    for path in sender.lead_email_paths if sender else ():
        value = value_at(payload, path)
        if isinstance(value, str) and value.strip():
            email = value.strip().lower()
            return email if len(email) <= MAX_LEAD_EMAIL_LENGTH else None
    return None


# A sender's time later than this after our receipt is a wrong clock or a wrong field; one
# before the oldest plausible year likewise. Either way the receipt time stands in.
_FUTURE_TOLERANCE = timedelta(days=1)
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def event_time(
    provider: str, payload: dict[str, Any], received_at: datetime
) -> tuple[datetime, str]:
    """When the event happened and who says so: the sender's time ("sender"), or — missing,
    unparsable or implausible — our receipt time ("received"). A time without a zone is UTC."""
    sender = SENDERS.get(provider)
    for path in sender.event_time_paths if sender else ():
        value = value_at(payload, path)
        if not isinstance(value, str) or len(value) > 64:
            continue
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            continue
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        if _EARLIEST <= when <= received_at + _FUTURE_TOLERANCE:
            return when, "sender"
    return received_at, "received"


def metric_labels(provider: str, event_type: str) -> tuple[str, str]:
    """(provider, event_type) label values, undocumented ones folded, so a sender cannot grow
    the number of series without bound."""
    sender = SENDERS.get(provider)
    if sender is None:
        return "unknown", "other"
    return provider, event_type if event_type in sender.event_types else "other"


# crm-smoke's deliveries: their idempotency key starts with this and their lead's address is
# at this domain (.invalid is reserved: never a real lead). The worker applies them whole and
# then rolls the CRM rows back, so a post-deploy check proves the path and leaves nothing.
SMOKE_KEY_PREFIX = "crm-smoke-"
SMOKE_LEAD_DOMAIN = "crm-smoke.invalid"


def is_smoke_test(idempotency_key: str, email: str | None) -> bool:
    """`email`: the event's lead e-mail, as lead_email() reads it."""
    return (
        idempotency_key.startswith(SMOKE_KEY_PREFIX)
        and email is not None
        and email.endswith("@" + SMOKE_LEAD_DOMAIN)
    )


def _does(effect: Effect) -> str:
    if effect.ignore:
        return "stored as ignored"
    if effect.stores_only:
        return "stored"
    done = [f"deal to {effect.stage}"] if effect.stage else []
    if effect.activity:
        done.append(f"{effect.activity}" + (" on the deal" if effect.on_deal else ""))
    if effect.do_not_contact:
        done.append("do-not-contact")
    return ", ".join(done)


def setup_table() -> str:
    """The README's table of where each sender's URL and secret go, from every sender."""
    lines = [
        "| sender | route | where it goes in the sender, and how the secret travels | secrets |",
        "|---|---|---|---|",
    ]
    for sender in SENDERS.values():
        lines.append(
            f"| {sender.title} | `/webhooks/{sender.name}` | {sender.setup} "
            f"| `{sender.secret_setting}` |"
        )
    return "\n".join(lines)


def events_table() -> str:
    """The README's table of events, from every sender's effects table."""
    lines = ["| sender | event type | effect | why |", "|---|---|---|---|"]
    for sender in SENDERS.values():
        spellings: dict[str, list[str]] = {}
        for alias, canonical in sender.aliases.items():
            spellings.setdefault(canonical, []).append(alias)
        rows = [
            (
                " / ".join(f"`{name}`" for name in (event_type, *spellings.get(event_type, ()))),
                effect,
            )
            for event_type, effect in sender.effects.items()
        ]
        rows += [(f"*{label}*", effect) for label, effect in sender.other_events.items()]
        for label, effect in rows:
            lines.append(f"| {sender.title} | {label} | {_does(effect)} | {effect.why} |")
    return "\n".join(lines)
