"""What a sender's module declares (Sender, Effect, Note, Option) and the pieces its functions
are built from: signature checks over the raw body and the refusal reasons they give. Nothing
here names a sender; each sender's module in this package says everything about itself."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.senders.fields import Lead

Path = tuple[str | int, ...]
Options = Mapping[str, Any]


class HeaderLookup(Protocol):
    """What authentication reads of the request's headers (Starlette's Headers is one)."""

    def getlist(self, key: str) -> list[str]: ...


@dataclass(frozen=True)
class Effect:
    """One row of a sender's effects table.
    stage: advance the lead's deal to it (never backwards, never a second deal).
    activity: log an activity of this type. on_deal: attach it to the lead's deal, if any.
    do_not_contact: flag the contact for good. step: the prototype's `step` result key.
    engagement: high-volume (sends, opens, clicks): a note each only with ENGAGEMENT_ACTIVITIES.
    ignore: documented, but nothing to do: the event is stored as `ignored`.
    Nothing set: the event is stored (`processed`, effect `stored`), no more.
    why: the reason for the row, shown in the README's table of events."""

    stage: str | None = None
    activity: str | None = None
    on_deal: bool = True
    do_not_contact: bool = False
    step: str | None = None
    engagement: bool = False
    ignore: bool = False
    why: str = field(default="", compare=False)

    @property
    def stores_only(self) -> bool:
        return self.stage is None and self.activity is None and not self.do_not_contact


@dataclass(frozen=True)
class Note:
    """The activity an effect logs, already worded by the sender's module."""

    subject: str
    body: str | None
    metadata: dict[str, Any]
    deal_title: str


@dataclass(frozen=True)
class Option:
    """A setting of one sender's own beyond its secrets and duplicate status: read from `env`
    by common.settings, `parse`d from its text (ValueError names what is wrong)."""

    env: str
    default: str
    parse: Callable[[str], Any]
    doc: str


# Why a delivery was refused: the values of the refusal metric's `reason` label.
NO_CREDENTIALS = "no_credentials"
REPEATED_HEADER = "repeated_header"
MALFORMED_SIGNATURE = "malformed_signature"
NOT_BEARER = "not_bearer"
NO_SECRET_CONFIGURED = "no_secret_configured"
NO_SECRET_MATCHED = "no_secret_matched"
STALE_SIGNATURE = "stale_signature"
DESCRIPTIONS = {
    NO_CREDENTIALS: "no signature or bearer header (or secret field)",
    REPEATED_HEADER: "the signature or Authorization header was sent more than once",
    MALFORMED_SIGNATURE: "the signature is malformed (not 64 hex digits, optionally after "
    "sha256=, or not t=<seconds>,v1=<hex>; or the secret field is not text)",
    NOT_BEARER: "the Authorization header is not 'Bearer <secret>'",
    NO_SECRET_CONFIGURED: "no secret is configured for this provider",
    NO_SECRET_MATCHED: "no configured secret matched",
    STALE_SIGNATURE: "the signature's timestamp is outside the allowed tolerance",
}

Authenticate = Callable[[HeaderLookup, bytes, Sequence[str], Options], str | None]


@dataclass(frozen=True)
class Sender:
    """Everything about one sender. The receiver, the worker, the settings, the metrics, the
    OpenAPI description, crm-smoke, the console and the README's table read it from the
    registry (common.senders); nothing else names a sender or one of its event types."""

    name: str  # the route /webhooks/<name> and the envelope's `provider`
    title: str  # as people write it
    # How a delivery proves it comes from the sender: None when it does, else a reason above.
    authenticate: Authenticate
    # The settings that hold its secrets (comma-separated, several during a rotation); the
    # development default; whether production refuses to start without one (else it is off).
    secret_setting: str
    dev_secret: str
    required_in_production: bool
    # Where the payload names the event type; other spellings the sender uses for one type.
    event_type_field: str
    effects: Mapping[str, Effect]
    # Where the lead's e-mail, and when the event happened (ISO 8601), are: first found wins.
    lead_email_paths: tuple[Path, ...]
    event_time_paths: tuple[Path, ...]
    # The fields that identify one delivery of one event, for its idempotency key: the event
    # type first. With nothing beyond it, the whole payload is hashed instead.
    fingerprint: Callable[[dict[str, Any]], list[str]]
    # The person and the activity's wording, for an event whose effect touches the CRM.
    parse: Callable[[str, dict[str, Any]], tuple[Lead, Note]]
    # A synthetic event of its main type for crm-smoke, from a run id and the lead's address.
    smoke_event: Callable[[str, str], dict[str, Any]]
    # How the sender delivers a body with a secret: (body, headers), for crm-smoke and tests.
    deliver: Callable[[dict[str, Any], str, int], tuple[bytes, dict[str, str]]]
    # Where in the sender's settings the URL and secret go: the README's table (setup_table).
    setup: str
    aliases: Mapping[str, str] = field(default_factory=dict)
    # The sender the service was first built for (one is): crm-smoke's default.
    primary: bool = False
    # Effects not keyed by one event type (chosen by choose_effect), for the README's table.
    other_events: Mapping[str, Effect] = field(default_factory=dict)
    # The effect when the table alone cannot say (a payload field chooses it); default: table.
    choose_effect: Callable[[str, dict[str, Any], Options], Effect | None] | None = None
    # Body fields never stored or queued (a secret the sender puts in the body).
    secret_fields: tuple[str, ...] = ()
    options: Mapping[str, Option] = field(default_factory=dict)
    # OpenAPI security schemes of its credentials in headers: name -> (header, value's form).
    security_schemes: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    auth_doc: str = ""

    @property
    def duplicate_status_setting(self) -> str:
        return f"DUPLICATE_STATUS_{self.name.upper()}"

    @property
    def event_types(self) -> frozenset[str]:
        """The types the sender documents; others share the metric label `other`."""
        return frozenset(self.effects)

    def event_type(self, payload: dict[str, Any]) -> str | None:
        value = payload.get(self.event_type_field)
        if not isinstance(value, str) or not value.strip():
            return None
        value = value.strip()
        return self.aliases.get(value, value)

    def effect(self, event_type: str, payload: dict[str, Any], options: Options) -> Effect | None:
        """The row the event is carried out by; None when it is stored as `ignored`."""
        if self.choose_effect is not None:
            chosen = self.choose_effect(event_type, payload, options)
        else:
            chosen = self.effects.get(event_type)
        return None if chosen is None or chosen.ignore else chosen


def value_at(payload: dict[str, Any], path: Path) -> object:
    """The value at `path` (keys and list positions), or None where there is none."""
    value: object = payload
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and len(value) > step else None
        else:
            value = value.get(step) if isinstance(value, dict) else None
    return value


_SHA256_HEX_LEN = 64


def check_hmac_hex(signature: str, message: bytes, secrets: Sequence[str]) -> str | None:
    """A hex HMAC-SHA256 of `message` (optionally after `sha256=`) by any of `secrets`."""
    signature = signature.removeprefix("sha256=")
    if len(signature) != _SHA256_HEX_LEN:
        return MALFORMED_SIGNATURE
    try:
        # Either case. Spaces, which fromhex skips, leave under 32 bytes: never a match.
        given = bytes.fromhex(signature)
    except ValueError:
        return MALFORMED_SIGNATURE
    # Every secret is compared, so timing does not reveal which one (if any) matched.
    # hmac.digest is OpenSSL's one-shot HMAC: no HMAC object built per delivery.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, hmac.digest(secret.encode(), message, "sha256"))
    return None if matched else NO_SECRET_MATCHED


def check_shared_secret(given: str, secrets: Sequence[str]) -> str | None:
    """`given` is one of `secrets`, compared in constant time."""
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given.encode(), secret.encode())
    return None if matched else NO_SECRET_MATCHED


def check_bearer(authorization: str, secrets: Sequence[str]) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return NOT_BEARER
    return check_shared_secret(token, secrets)


def hmac_hex(message: bytes, secret: str) -> str:
    return hmac.digest(secret.encode(), message, "sha256").hex()


def text(value: object) -> str:
    """A payload value as key material: stripped text, else ''. (Keys already issued depend
    on this: a number was never key material.)"""
    return value.strip() if isinstance(value, str) else ""
