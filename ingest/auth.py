"""Sender authentication over the raw body, before anything parses it, as the sender's module
says (common.senders). A refusal says why, for the log line and the metric an operator reads
when a sender's deliveries get 401 (the sender itself only sees the 401)."""

from __future__ import annotations

from starlette.datastructures import Headers

from common.senders import SENDERS
from common.senders.kit import DESCRIPTIONS
from common.settings import Settings

__all__ = ["DESCRIPTIONS", "refusal"]


def refusal(provider: str, headers: Headers, body: bytes, settings: Settings) -> str | None:
    """None when the raw body carries valid credentials of `provider`; else why not, a key of
    DESCRIPTIONS. Never a secret, a signature or the body."""
    # An empty secret would let anyone sign.
    secrets = [secret.get() for secret in settings.webhook_secrets(provider) if secret.get()]
    sender = SENDERS[provider]
    return sender.authenticate(headers, body, secrets, settings.sender_option(provider))
