import logging

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from config.celery import app as celery_app

logger = logging.getLogger(__name__)


def database_state() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        logger.warning("Health check: database unreachable: %s", exc.__class__.__name__)
        return {"ok": False, "engine": connection.vendor, "error": exc.__class__.__name__}
    return {"ok": True, "engine": connection.vendor}


def broker_state() -> dict:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"ok": True, "mode": "embedded (tasks run in-process after commit)"}
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
    except Exception as exc:  # kombu raises transport-specific errors
        logger.warning("Health check: broker unreachable: %s", exc.__class__.__name__)
        return {"ok": False, "mode": "broker", "error": exc.__class__.__name__}
    return {"ok": True, "mode": "broker", "transport": conn.transport_cls}


@never_cache
@require_GET
def healthz(request):
    database = database_state()
    broker = broker_state()
    if not database["ok"]:
        status, http_status = "unavailable", 503
    elif not broker["ok"]:
        # Assignments still work; background side effects wait as "pending" rows.
        status, http_status = "degraded", 200
    else:
        status, http_status = "ok", 200
    return JsonResponse(
        {"status": status, "database": database, "broker": broker}, status=http_status
    )
