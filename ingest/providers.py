"""Each provider's webhook settings, as plain data: how it authenticates, where its type is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common.settings import Secret, Settings
from ingest.auth import usable, verify_calcom, verify_instantly
from ingest.headers import HeaderLookup


@dataclass(frozen=True)
class Provider:
    name: str
    verify: Callable[[HeaderLookup, bytes, Sequence[Secret]], bool]
    secrets: tuple[Secret, ...]
    event_type_field: str

    def event_type(self, payload: dict[str, Any]) -> str | None:
        value = payload.get(self.event_type_field)
        return value.strip() if isinstance(value, str) and value.strip() else None


def providers_from(settings: Settings) -> dict[str, Provider]:
    return {
        "instantly": Provider(
            name="instantly",
            verify=verify_instantly,
            secrets=usable(settings.hmac_secrets_instantly),
            event_type_field="event_type",
        ),
        "calcom": Provider(
            name="calcom",
            verify=verify_calcom,
            secrets=usable(settings.hmac_secrets_calcom),
            event_type_field="triggerEvent",
        ),
    }
