"""Throttling of API-key requests, counted in the "throttle" cache (Redis in production,
this process's memory in embedded mode).

- Failed attempts: every refused API key counts against the client's address. Once an
  address has API_KEY_FAILURES_PER_MINUTE of them in the current minute, every API-key
  request from it, a valid key's too, is answered `429 too_many_attempts` until the
  minute is over: a guesser learns nothing more, not even that a guess was right.
- Per-key rate: a tenant with `api_rate_limit_per_minute` gives each of its keys that many
  requests per minute, then `429 rate_limited`. Tenants without one (the default) are
  never limited, and their requests write nothing to the cache.

The windows are calendar minutes: a counter's key names its minute, so `Retry-After` is
known without asking the cache how long a key has left (which a cache may not say).

The cache is a guard, not a dependency: when it fails, or does not answer within
THROTTLE_CACHE_TIMEOUT_SECONDS (the socket timeouts of CACHES["throttle"]), the request
goes through unthrottled and a warning is logged.

This lives in the authentication class rather than in DRF throttle classes because the
address check must come before the key is verified (DRF runs throttles after
authentication, whose 401 would answer first) and because it must guard every view that
accepts API keys, not only those that remember to list a throttle.
"""

import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from rest_framework import exceptions

from core.addresses import client_address
from teams.models import ApiKey

logger = logging.getLogger(__name__)

CACHE_ALIAS = "throttle"
WINDOW_SECONDS = 60


class TooManyAttempts(exceptions.Throttled):
    default_detail = "Too many failed API key attempts from your address."
    default_code = "too_many_attempts"


class RateLimited(exceptions.Throttled):
    default_detail = "This API key has used up its requests for this minute."
    default_code = "rate_limited"


@dataclass(frozen=True)
class Window:
    index: int
    seconds_left: int

    @classmethod
    def now(cls) -> "Window":
        now = time.time()
        index = int(now // WINDOW_SECONDS)
        return cls(index=index, seconds_left=max(1, math.ceil((index + 1) * WINDOW_SECONDS - now)))


class ApiKeyThrottle:
    """The throttle of one API-key request.

    After the cache's first failure it is not asked again during this request, so a hung
    cache costs a request one timeout at most.
    """

    def __init__(self, request):
        self.address = client_address(request)
        self.window = Window.now()
        self._cache_failed = False

    def check_address(self) -> None:
        """Refuse the request if its address has used up its failed attempts."""
        failures = self._cache_call(lambda cache: cache.get(self._failures_key()))
        if failures is not None and failures >= settings.API_KEY_FAILURES_PER_MINUTE:
            raise TooManyAttempts(wait=self.window.seconds_left)

    def record_failure(self) -> None:
        self._increment(self._failures_key())

    def check_key_rate(self, api_key: ApiKey) -> None:
        """Count the request against its key's per-minute budget, if its tenant has one."""
        limit = api_key.tenant.api_rate_limit_per_minute
        if limit is None:
            return
        count = self._increment(f"throttle:key:{api_key.pk}:{self.window.index}")
        if count is not None and count > limit:
            raise RateLimited(wait=self.window.seconds_left)

    def _failures_key(self) -> str:
        return f"throttle:failures:{self.address}:{self.window.index}"

    def _increment(self, key: str) -> int | None:
        def increment(cache):
            # add() starts the minute's counter; once it exists, incr() is atomic in Redis.
            if cache.add(key, 1, timeout=2 * WINDOW_SECONDS):
                return 1
            return cache.incr(key)

        return self._cache_call(increment)

    def _cache_call(self, operation):
        if self._cache_failed:
            return None
        try:
            return operation(caches[CACHE_ALIAS])
        except Exception as exc:  # whatever the cache raises, the request goes on
            self._cache_failed = True
            # The type only: a cache error's text is not ours to vouch for.
            logger.warning(
                "API throttling skipped for a request: the %r cache failed (%s).",
                CACHE_ALIAS,
                type(exc).__name__,
            )
            return None
