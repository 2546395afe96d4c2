"""Reading the person an event is about from a payload: the field readers every sender's
parser uses, and the Lead they make. A payload that cannot be read raises PayloadError, which
the worker dead-letters as `invalid_payload`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_LEAD_EMAIL_LENGTH = 320  # RFC 5321's limit on a forward path


class PayloadError(ValueError):
    """The payload lacks what its event needs, or holds it in the wrong shape."""


# Addresses at these domains say nothing about the lead's employer: no company is made for them.
FREE_MAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "hotmail.com", "outlook.com",
        "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mac.com", "proton.me",
        "protonmail.com", "gmx.de", "gmx.net", "gmx.com", "web.de", "t-online.de", "yandex.ru",
        "mail.ru", "zoho.com", "fastmail.com", "hey.com", "mail.com", "qq.com", "163.com",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Lead:
    email: str
    first_name: str | None
    last_name: str | None
    company_name: str | None
    domain: str | None

    @property
    def display_name(self) -> str:
        name = " ".join(part for part in (self.first_name, self.last_name) if part)
        return name or self.email


def text_field(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"'{name}' must be a string, got {type(value).__name__}")
    return value.strip() or None


def int_field(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"'{name}' must be a whole number, got {type(value).__name__}")
    return value


def object_field(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"'{name}' must be an object, got {type(value).__name__}")
    return value


def id_field(data: dict[str, Any], name: str) -> str | None:
    """An identifier senders send as text or as a number, as text."""
    value = data.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text_field(data, name)


def first_text(data: dict[str, Any], *names: str) -> str | None:
    """The first of `names` that holds text (a newer field name before its deprecated ones)."""
    return next((value for name in names if (value := text_field(data, name))), None)


def split_name(full: str | None) -> tuple[str | None, str | None]:
    """'Ada Lovelace' as ('Ada', 'Lovelace'), for senders that send one name field."""
    first, _, last = (full or "").strip().partition(" ")
    return first or None, last.strip() or None


def checked_email(email: str | None, where: str) -> str:
    if email is None:
        raise PayloadError(f"no lead e-mail: {where}")
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or len(email) > MAX_LEAD_EMAIL_LENGTH:
        raise PayloadError("lead e-mail is not an address")
    if any(c.isspace() for c in email):
        raise PayloadError("lead e-mail is not an address")
    return email


_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def host_name(value: str | None) -> str | None:
    """`value` as a lower-case DNS host name with at least two labels, or None when it is not
    one (over 253 characters, an empty or over-long label, a character outside a host name):
    a company is keyed by it, and a lead is never lost over a bad one."""
    if not value:
        return None
    host = value.lower().rstrip(".")
    try:
        ascii_host = host.encode("idna").decode()  # an internationalised name as DNS sends it
    except UnicodeError:
        return None
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or len(labels) < 2:
        return None
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return host


def _website_domain(website: str | None) -> str | None:
    if website is None:
        return None
    try:
        host = urlsplit(website if "//" in website else f"//{website}").hostname
    except ValueError:  # e.g. an unbalanced '[' taken for an IPv6 address
        return None
    domain = host_name(host)
    return domain.removeprefix("www.") if domain else None


def make_lead(
    email: str,
    *,
    first_name: str | None,
    last_name: str | None,
    company_name: str | None = None,
    website: str | None = None,
) -> Lead:
    """A lead whose company is named by its website, else by a non-free-mail e-mail domain."""
    email_domain = host_name(email.rpartition("@")[2])
    domain = _website_domain(website)
    if domain is None and email_domain not in FREE_MAIL_DOMAINS:
        domain = email_domain
    return Lead(email, first_name, last_name, company_name, domain)
