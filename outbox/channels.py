"""Channels: how one outbound message leaves the building.

A channel is a small class with one `send()`, registered by name (the healthchecks
`transports.py` pattern). The outbox core knows nothing of WhatsApp, email or webhooks:
it claims a due message, calls its channel's `send()` within a deadline, and stores what
happened. `send()` returns a `Delivered` or raises:

* `TransientSendError`: could not reach the far side, it timed out, or it answered
  429/5xx. The message is tried again later, while its attempts last.
* `PermanentSendError`: the far side refused it, or it cannot be sent as it is.
* `SkipMessage`: nobody needs it any more (e.g. the lead moved on to another agent).

Apps register their channels in their AppConfig.ready() (`inbox` registers `whatsapp`;
the outbox itself registers `email`).
"""

from dataclasses import dataclass


class SendError(Exception):
    """The message was not sent."""


class TransientSendError(SendError):
    """Worth trying again later."""


class PermanentSendError(SendError):
    """Trying again would fail the same way."""


class SkipMessage(Exception):
    """The message is no longer needed; the reason is stored for the admin."""


@dataclass(frozen=True)
class Delivered:
    provider_message_id: str = ""


class Channel:
    """Base class: subclasses set `name` and implement `send()`."""

    name: str = ""
    # Tries in all (first attempt included); None: OUTBOX_MAX_ATTEMPTS.
    max_attempts: int | None = None
    # The backoff policy's parameters; None: OUTBOX_RETRY_BASE_SECONDS and
    # OUTBOX_RETRY_MAX_DELAY_SECONDS.
    retry_base_seconds: float | None = None
    retry_max_delay_seconds: float | None = None
    # The line logged once, when a message has finally failed ("%s": what and why).
    failure_log_line = "Outbound message failed: %s"

    def endpoint_key(self, *, tenant_id, target: str, payload: dict) -> str:
        """Which far side a message goes to. At most OUTBOX_ENDPOINT_CONCURRENCY messages
        of one endpoint are in flight at once, so one slow endpoint cannot take every
        delivery slot."""
        return self.name

    def send(self, message, *, deadline) -> Delivered:
        raise NotImplementedError

    def failure_line(self, message) -> str:
        return self.failure_log_line

    def describe(self, message) -> str:
        """How log lines name a message."""
        return f"[message {message.pk}, {message.kind or self.name}, tenantId={message.tenant_id}]"


_registry: dict[str, Channel] = {}


def register(channel_class: type[Channel]) -> type[Channel]:
    """Class decorator: make a channel available under its `name`."""
    if not channel_class.name:
        raise ValueError(f"{channel_class.__name__} has no name.")
    _registry[channel_class.name] = channel_class()
    return channel_class


def get_channel(name: str) -> Channel:
    try:
        return _registry[name]
    except KeyError:
        raise PermanentSendError(f'No channel "{name}" is registered.') from None


def channel_names() -> list[str]:
    return sorted(_registry)
