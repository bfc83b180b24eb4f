"""What a log line is about: the request (or task) and the tenant, session, lead and
outbound message it concerns, carried by a context variable and copied onto every log
record by `ContextFilter`.

One context variable holds all the fields as an immutable dict, so that a scope (a
request, a task, one send) can put back exactly what was there before with one token,
and a thread or an asyncio task never sees another one's values. The fields are set
where they become known (the API key names the tenant, the handover creates the
session, ...); the code that logs does not pass them around.

`LOG_FORMAT=json` (config/settings.py) writes each record as one JSON object with these
fields (null when unset); the plain format shows the ones that are set, in brackets.
"""

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar, Token

FIELDS = ("request_id", "tenant_id", "session_id", "lead_id", "message_id")
# How the plain format names them: "[req=… tenant=… session=…]".
_PLAIN_LABELS = {
    "request_id": "req",
    "tenant_id": "tenant",
    "session_id": "session",
    "lead_id": "lead",
    "message_id": "message",
}

_EMPTY: dict = {}
_context: ContextVar[dict] = ContextVar("log_context", default=_EMPTY)


def _clean(values: dict) -> dict:
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise TypeError(f"Unknown log context fields: {', '.join(sorted(unknown))}")
    return {name: str(value) for name, value in values.items() if value is not None}


def current() -> dict:
    """The fields set in this context (unset ones are absent)."""
    return dict(_context.get())


def _merged(values: dict) -> dict:
    cleaned = _clean(values)
    merged = {name: value for name, value in _context.get().items() if name not in values}
    merged.update(cleaned)
    return merged


def bind(**values) -> None:
    """Set fields until the enclosing scope (request, task, `bound`) ends; None unsets."""
    _context.set(_merged(values))


def start(**values) -> Token:
    """Begin a new scope with only these fields (nothing inherited from an outer one);
    give the token to `reset` when the scope ends."""
    return _context.set(_clean(values))


def reset(token: Token) -> None:
    """End the scope `start` began: the fields are again what they were before it."""
    try:
        _context.reset(token)
    except ValueError:
        # Ended in another context than it began in (a signal pair split across
        # contexts): leave nothing behind rather than something stale.
        _context.set(_EMPTY)


@contextlib.contextmanager
def bound(**values) -> Iterator[None]:
    """Set fields (None unsets) for the duration of a block; what binds inside it ends
    with it too."""
    token = _context.set(_merged(values))
    try:
        yield
    finally:
        reset(token)


class ContextFilter(logging.Filter):
    """Copies the context's fields onto every record passing the handler (None when
    unset), so that every formatter can show them. A field the log call passed with
    `extra=` wins: a sweep names each lead it logs about that way."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = _context.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, values.get(name))
        if record.request_id is None:
            # Django logs a 4xx/5xx answer ("Not Found: /x") after the middleware's scope
            # ended, passing the request along: its id is on the request.
            record.request_id = getattr(getattr(record, "request", None), "request_id", None)
        return True


def plain_label(record: logging.LogRecord) -> str:
    """ " [req=… tenant=…]" for the fields the record carries, or ""."""
    parts = [
        f"{_PLAIN_LABELS[name]}={value}"
        for name in FIELDS
        if (value := getattr(record, name, None)) is not None
    ]
    return f" [{' '.join(parts)}]" if parts else ""


class PlainFormatter(logging.Formatter):
    """The plain text format, with `%(context)s` standing for `plain_label` (empty when
    no field is set, so a line without context reads exactly as before)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        copy = logging.makeLogRecord(record.__dict__)
        copy.context = plain_label(record)
        return super().formatMessage(copy)
