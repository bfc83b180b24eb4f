"""Login throttling (django-axes): whose account and address a login attempt counts
against, and the page a locked-out login gets.

Both login pages, /admin/login/ and /accounts/login/, go through the same axes backend
and middleware, so everything here applies to both.
"""

import math
from datetime import datetime, timedelta

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off, get_failure_limit
from django.conf import settings
from django.shortcuts import render
from django.utils import timezone

from core.addresses import client_address


def username(request, credentials) -> str | None:
    """The account an attempt is for: the email in lower case (users are stored that way),
    so `Ann@Example.com` and `ann@example.com` wear down one and the same limit."""
    source = credentials if credentials else getattr(request, "data", request.POST)
    value = source.get(settings.AXES_USERNAME_FORM_FIELD)
    return value.strip().lower() if isinstance(value, str) else value


def client_ip(request) -> str | None:
    """The address an attempt counts against: the same rule as the API's throttle."""
    return client_address(request)


def lockout_response(request, original_response, credentials):
    """The lockout page (429), saying how many minutes are actually left, with the
    seconds in Retry-After."""
    cool_off = get_cool_off(request)
    seconds = _seconds_until_unlocked(request, credentials, cool_off)
    context = {
        "minutes": max(1, math.ceil(seconds / 60)),
        "failure_limit": get_failure_limit(request, credentials),
        "login_url": request.get_full_path(),
    }
    response = render(
        request,
        settings.AXES_LOCKOUT_TEMPLATE,
        context,
        status=settings.AXES_HTTP_RESPONSE_CODE,
    )
    response["Retry-After"] = str(seconds)
    return response


def _seconds_until_unlocked(request, credentials, cool_off: timedelta) -> int:
    """When the lock lifts: the account and the address are counted separately, and each
    stays locked while its failures within the cool-off reach the limit. Older records
    leave the window first, so a lock lifts one cool-off after the record that brought
    the newest ones up to the limit; the later of the two locks decides."""
    limit = get_failure_limit(request, credentials)
    now = getattr(request, "axes_attempt_time", None) or timezone.now()
    handler = AxesProxyHandler.get_implementation()
    unlock_at: datetime | None = None
    for attempts in handler.get_user_attempts(request, credentials):
        failures = 0
        for attempt_time, count in attempts.order_by("-attempt_time").values_list(
            "attempt_time", "failures_since_start"
        ):
            failures += count
            if failures >= limit:
                lifts = attempt_time + cool_off
                unlock_at = lifts if unlock_at is None else max(unlock_at, lifts)
                break
    if unlock_at is None:
        return int(cool_off.total_seconds())
    return max(0, math.ceil((unlock_at - now).total_seconds()))
