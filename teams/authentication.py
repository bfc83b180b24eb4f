"""Tenant API key authentication for DRF.

Written here rather than taken from djangorestframework-api-key because our keys must
carry a tenant, be read from `X-API-Key` *or* the `apiKey` query parameter (callers
use both), use a visible `wk_` prefix, and record `last_used_at`
without a write on every request; that library's model and lookup fit none of these.

The key and its tenant come from `teams.api_key_cache` (each process remembers a lookup
for a few seconds; a revoked key stops working within that time everywhere).
"""

import hmac
from dataclasses import dataclass

from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication

from core import log_context
from teams import api_key_cache
from teams.models import ApiKey, Tenant
from teams.services import hash_api_key, split_api_key, touch_api_key
from teams.throttling import ApiKeyThrottle

API_KEY_HEADER = "HTTP_X_API_KEY"
API_KEY_QUERY_PARAM = "apiKey"


@dataclass(frozen=True)
class ApiKeyClient:
    """The `request.user` of a request authenticated by a tenant API key."""

    api_key: ApiKey

    is_authenticated = True
    is_anonymous = False

    @property
    def tenant(self) -> Tenant:
        return self.api_key.tenant


def _unauthorized(code: str, message: str) -> exceptions.AuthenticationFailed:
    return exceptions.AuthenticationFailed(detail=message, code=code)


def _verified_key(plaintext: str) -> ApiKey:
    """The active key of an active tenant that `plaintext` is, or AuthenticationFailed."""
    parts = split_api_key(plaintext)
    if parts is None:
        raise _unauthorized("api_key_malformed", "The API key is not in the wk_… format.")
    prefix, _secret = parts
    api_key = api_key_cache.lookup(prefix)
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, hash_api_key(plaintext)):
        raise _unauthorized("api_key_invalid", "The API key is not valid.")
    if not api_key.is_active:
        raise _unauthorized("api_key_inactive", "The API key has been revoked.")
    if not api_key.tenant.is_active:
        raise _unauthorized("tenant_inactive", "The tenant of this API key is deactivated.")
    return api_key


class TenantApiKeyAuthentication(BaseAuthentication):
    """Every refused key counts against the client's address, and a key of a tenant with
    a request rate counts against that (teams.throttling): whatever view accepts API
    keys is throttled by using this class."""

    def authenticate(self, request):
        plaintext = request.META.get(API_KEY_HEADER) or request.query_params.get(
            API_KEY_QUERY_PARAM
        )
        if not plaintext:
            return None
        throttle = ApiKeyThrottle(request)
        throttle.check_address()
        try:
            api_key = _verified_key(plaintext.strip())
        except exceptions.AuthenticationFailed:
            throttle.record_failure()
            raise
        # Only now is the tenant known; the key itself is never logged.
        log_context.bind(tenant_id=api_key.tenant_id)
        throttle.check_key_rate(api_key)
        touch_api_key(
            api_key=api_key, resolution_seconds=settings.API_KEY_LAST_USED_RESOLUTION_SECONDS
        )
        api_key_cache.note_last_used(api_key)
        return ApiKeyClient(api_key=api_key), api_key

    def authenticate_header(self, request):
        return 'ApiKey realm="api", header="X-API-Key"'


class SessionAuthentication401(SessionAuthentication):
    """Django login (with CSRF), answering 401 rather than 403 when nobody is logged in."""

    def authenticate_header(self, request):
        return 'Session realm="handover"'
