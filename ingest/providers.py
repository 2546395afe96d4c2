"""Each provider's webhook settings, as plain data: how it authenticates, where its type is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from common.settings import Secret, Settings
from ingest.auth import verify_calcom, verify_instantly


@dataclass(frozen=True)
class Provider:
    name: str
    verify: Callable[[Headers, bytes, Sequence[Secret]], bool]
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
            secrets=settings.hmac_secrets_instantly,
            event_type_field="event_type",
        ),
        "calcom": Provider(
            name="calcom",
            verify=verify_calcom,
            secrets=settings.hmac_secrets_calcom,
            event_type_field="triggerEvent",
        ),
    }
