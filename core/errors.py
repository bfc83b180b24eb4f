"""Refusals that services raise, by kind, without knowing about HTTP.

Each refusal has a stable machine-readable `code`, a human `message`, and optionally the
`field` it is about. Its class says what kind of refusal it is; the API maps each kind
to a status in one place (core.api), the admin and the agent pages show `message`.
"""


class DomainError(Exception):
    """A refusal with a stable code. Raise one of the subclasses below."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.fields = {field: [message]} if field else None


class InvalidInput(DomainError):
    """The request itself is malformed or names an unknown value."""


class Forbidden(DomainError):
    """The caller is known but may not do this."""


class NotFound(DomainError):
    """What the request names does not exist (or not in the caller's tenant)."""


class Conflict(DomainError):
    """The request is valid, but the current state of the data refuses it."""


class Unprocessable(DomainError):
    """The request is well-formed but cannot be honoured as sent (e.g. an
    Idempotency-Key reused with a different body)."""
