import logging

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.utils.log import log_response
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.api import retry_after_seconds
from outbox.delivery import backlog

logger = logging.getLogger(__name__)


def database_state() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        return {"ok": False, "engine": connection.vendor, "error": exc.__class__.__name__}
    return {"ok": True, "engine": connection.vendor}


def broker_state() -> dict:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"ok": True, "mode": "embedded (tasks run in-process after commit)"}
    # A ping with a half-second budget: a hung broker must not hang the health check.
    try:
        client = redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        client.ping()
        client.close()
    except Exception as exc:  # redis raises connection, timeout and protocol errors
        logger.warning("Health check: broker unreachable: %s", exc.__class__.__name__)
        return {"ok": False, "mode": "broker", "error": exc.__class__.__name__}
    return {"ok": True, "mode": "broker", "transport": "redis"}


def outbox_state() -> dict:
    """The delivery backlog: messages due now and how long the oldest has waited."""
    try:
        return {"ok": True, **backlog()}
    except DatabaseError as exc:
        return {"ok": False, "error": exc.__class__.__name__}


@never_cache
@require_GET
def healthz(request):
    database = database_state()
    broker = broker_state()
    outbox = outbox_state() if database["ok"] else {"ok": False, "error": "database"}
    if not database["ok"]:
        status, http_status = "unavailable", 503
    elif not broker["ok"]:
        # Assignments still work; background side effects wait as "pending" rows.
        status, http_status = "degraded", 200
    else:
        status, http_status = "ok", 200
    response = JsonResponse(
        {"status": status, "database": database, "broker": broker, "outbox": outbox},
        status=http_status,
    )
    if http_status == 503:
        # What the API answers meanwhile too (core.api): a load balancer may honour it.
        response["Retry-After"] = str(retry_after_seconds())
        # One warning line per probe, as for any outage answer, not Django's error line.
        log_response(
            "Health check: database unreachable (%s)",
            database["error"],
            response=response,
            request=request,
            logger=logger,
            level="warning",
        )
    return response
