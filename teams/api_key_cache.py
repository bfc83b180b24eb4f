"""The API key → tenant lookup, remembered by each process for CACHE_SECONDS.

Every API request used to start with a SELECT of its key and tenant. Here each process
keeps what that SELECT returned (the key row and its tenant row, the key's SHA-256 but
never its plaintext) in its own memory, keyed by the key's visible prefix, for at most
CACHE_SECONDS; every request gets fresh model instances built from it, so no request
sees another's changes to them.

Why per process and not in Redis: a lookup in memory costs no round trip and cannot
hang, so a stopped or dead Redis adds nothing to a request here (the throttle's one
read keeps its own 80 ms timeout), and the hot path does not grow a dependency. The
price is that another process's change is seen only when the entry expires:

- a key revoked, or a tenant deactivated or edited, in *this* process (a `save()` of the
  row, as the services, the admin and the commands do) is forgotten here at its commit;
- anywhere else (another gunicorn worker, `manage.py revoke_api_key`, a queryset
  `update()` such as the webhooks flag) within CACHE_SECONDS. The entry's clock starts
  before its SELECT, so a revoked key stops working at most CACHE_SECONDS after the
  revocation committed, in every process.

Only rows that exist are remembered (a guessed prefix always costs its SELECT and
counts against the guesser's address), and the number of entries is bounded.
"""

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from teams.models import ApiKey, Tenant

# At most this many seconds between a change committed elsewhere and every process
# seeing it (the bound for a revoked key is 5 s; 4 leaves a margin for clocks
# and for the request that was already past its lookup).
CACHE_SECONDS = float(getattr(settings, "API_KEY_CACHE_SECONDS", 4.0))
MAX_ENTRIES = 10_000

_KEY_FIELDS = [f.attname for f in ApiKey._meta.concrete_fields]
_TENANT_FIELDS = [f.attname for f in Tenant._meta.concrete_fields]

# Monotonic, so that a wall clock set back cannot keep an entry alive; a test moves it.
clock = time.monotonic


@dataclass
class _Entry:
    key_values: tuple
    tenant_values: tuple
    expires_at: float
    # What this process last knew of `last_used_at` (its own writes included), so that a
    # key used all day costs one UPDATE per resolution window, not one per expiry.
    last_used_at: datetime | None = field(default=None)


_entries: dict[str, _Entry] = {}
_lock = threading.Lock()


def lookup(prefix: str) -> ApiKey | None:
    """The key with this prefix and its tenant (`api_key.tenant`), as fresh instances, or
    None when no key has it. At most one SELECT per prefix every CACHE_SECONDS."""
    entry = _entries.get(prefix)
    if entry is None or entry.expires_at <= clock():
        entry = _load(prefix)
        if entry is None:
            return None
    api_key = ApiKey.from_db("default", _KEY_FIELDS, entry.key_values)
    api_key.last_used_at = entry.last_used_at
    api_key.tenant = Tenant.from_db("default", _TENANT_FIELDS, entry.tenant_values)
    return api_key


def note_last_used(api_key: ApiKey) -> None:
    """Remember the `last_used_at` a request wrote (or found), until the entry expires."""
    entry = _entries.get(api_key.prefix)
    if entry is not None and api_key.pk == _key_pk(entry):
        entry.last_used_at = api_key.last_used_at


def forget_tenant(tenant_id) -> None:
    """Drop this process's entries of the tenant's keys (its row or a key changed)."""
    with _lock:
        for prefix in [p for p, e in _entries.items() if _tenant_pk(e) == tenant_id]:
            _entries.pop(prefix, None)


def clear() -> None:
    with _lock:
        _entries.clear()


def _load(prefix: str) -> _Entry | None:
    expires_at = clock() + CACHE_SECONDS  # before the SELECT: see the module docstring
    # The one deliberate cross-tenant lookup: the key is what tells us the tenant.
    api_key = ApiKey.all_tenants.select_related("tenant").filter(prefix=prefix).first()
    if api_key is None:
        return None
    entry = _Entry(
        key_values=tuple(getattr(api_key, name) for name in _KEY_FIELDS),
        tenant_values=tuple(getattr(api_key.tenant, name) for name in _TENANT_FIELDS),
        expires_at=expires_at,
        last_used_at=api_key.last_used_at,
    )
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()  # rare (that many live keys in one process); simplest bound
        _entries[prefix] = entry
    return entry


_KEY_PK = _KEY_FIELDS.index("id")
_KEY_TENANT = _KEY_FIELDS.index("tenant_id")


def _key_pk(entry: _Entry):
    return entry.key_values[_KEY_PK]


def _tenant_pk(entry: _Entry):
    return entry.key_values[_KEY_TENANT]


def _forget_on_commit(sender, instance, **kwargs) -> None:
    tenant_id = instance.pk if sender is Tenant else instance.tenant_id
    # Now, and again at the commit: a request of another thread may have read the old
    # row before the commit and stored it meanwhile.
    forget_tenant(tenant_id)
    transaction.on_commit(lambda: forget_tenant(tenant_id), robust=True)


for _model in (ApiKey, Tenant):
    post_save.connect(_forget_on_commit, sender=_model, dispatch_uid=f"api_key_cache:{_model}")
    post_delete.connect(_forget_on_commit, sender=_model, dispatch_uid=f"api_key_cache-:{_model}")
