"""A short-lived, per-process memo for what a channel reads before every send (a tenant's
CRM integration and its decrypted key, a webhook endpoint and its signer).

At hundreds of messages a second the same few rows were read, and the same key
decrypted, for every message. A channel keeps what it read for `LOOKUP_SECONDS` (a
setting, default 2 s): a change to an integration or an endpoint (a new key, turned off)
reaches a running worker within that time. Only usable results are kept: a missing or
broken integration is read again on every send, so "Send again" after a fix works at
once. `deliver_due()` (tests, commands, embedded mode) starts from an empty memo, so what
it sends always reflects the database as it is.
"""

import threading
import time

from django.conf import settings

_lock = threading.Lock()
_entries: dict = {}  # (namespace, key) -> (expires at, value)


def lookup_seconds() -> float:
    return float(getattr(settings, "OUTBOX_LOOKUP_CACHE_SECONDS", 2.0))


def get(namespace: str, key, load):
    """`load()`'s result for (namespace, key), read at most every `lookup_seconds()`.
    `load` returns (value, keep): a value not worth keeping is returned but not kept."""
    entry_key = (namespace, key)
    now = time.monotonic()
    entry = _entries.get(entry_key)
    if entry is not None and entry[0] > now:
        return entry[1]
    value, keep = load()
    seconds = lookup_seconds()
    with _lock:
        if keep and seconds > 0:
            _entries[entry_key] = (now + seconds, value)
        else:
            _entries.pop(entry_key, None)
    return value


def forget(namespace: str, key) -> None:
    """Drop one entry (this process changed the row, e.g. disabled an endpoint)."""
    with _lock:
        _entries.pop((namespace, key), None)


def clear() -> None:
    with _lock:
        _entries.clear()
