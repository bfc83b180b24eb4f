"""GET /metrics for Prometheus, and the middleware that counts every request.

Off unless METRICS_TOKEN is set (404, as if there were no such page); then the scraper
sends `Authorization: Bearer <METRICS_TOKEN>`. The metric objects live in `core.metrics`.

Under gunicorn (several worker processes) PROMETHEUS_MULTIPROC_DIR must be set for every
process of the app on this host (web, outbox, Celery), pointing to one directory that is
emptied before they start: each process writes its values there and this view adds them
up, so a scrape answers the same whichever worker serves it. `config/gunicorn.conf.py`
tells prometheus-client when a worker exits.
"""

import hmac
import os
import time

from django.conf import settings
from django.http import Http404, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from core.api import error_body
from core.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS
from outbox.delivery import backlog

# Anything else (a scanner's made-up verbs) is counted as OTHER: one series, not one each.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"


def route_label(request) -> str:
    """The URL pattern that served the request ("/api/v1/sessions/<uuid:session_id>"),
    never the path itself: ids in paths would make a time series per object."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return "/" + match.route
    if settings.STATIC_URL and request.path.startswith(settings.STATIC_URL):
        return settings.STATIC_URL + "*"  # answered by WhiteNoise before URL resolution
    return UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Counts and times every response; first in MIDDLEWARE, so redirects and answers
    given by other middleware (CORS preflights, lockouts, 503s) are counted too."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        route = route_label(request)
        HTTP_REQUESTS.labels(method=method, route=route, status=str(response.status_code)).inc()
        HTTP_REQUEST_DURATION.labels(method=method, route=route).observe(elapsed)
        return response


class OutboxBacklogCollector:
    """The delivery backlog, read from the database when scraped (as /healthz reports it):
    the same in every process, so it is not kept per process like the counters."""

    def collect(self):
        state = backlog()
        yield GaugeMetricFamily(
            "outbound_backlog_due",
            "Outbound messages due for sending now (pending and due, or with a lapsed lease).",
            value=state["due"],
        )
        yield GaugeMetricFamily(
            "outbound_backlog_oldest_seconds",
            "How long the oldest due outbound message has waited; 0 when none is due.",
            value=state["oldest_due_seconds"],
        )


def metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # The values of every process, read from their files in that directory.
        multiprocess.MultiProcessCollector(registry)
    else:
        # One process (embedded mode, runserver, tests): its own default registry.
        registry.register(REGISTRY)
    registry.register(OutboxBacklogCollector())
    return registry


def _bearer_token(request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@never_cache
@require_GET
def metrics_view(request):
    expected = settings.METRICS_TOKEN
    if not expected:
        raise Http404("Metrics are off: METRICS_TOKEN is not set.")
    given = _bearer_token(request)
    if given is None:
        response = JsonResponse(
            error_body("not_authenticated", "Send Authorization: Bearer <METRICS_TOKEN>."),
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return JsonResponse(error_body("permission_denied", "Wrong metrics token."), status=403)
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(metrics_registry()), content_type=content_type)
