"""Prometheus metric objects, in the bottom layer so that every app can count.

The apps only increment these; `config.metrics` serves them at /metrics. Under several
processes (gunicorn workers, the outbox worker, Celery) set PROMETHEUS_MULTIPROC_DIR
before Python starts: prometheus-client then keeps each process's values in files there,
and the /metrics view adds them up (MultiProcessCollector). Without it they live in this
process's default registry (embedded mode, tests).

Label values come from short fixed lists (outcomes, reasons, stages, channels, URL
patterns), never from ids or user input: each value is a time series kept forever.
"""

from prometheus_client import Counter, Histogram

# --- requests (config.metrics.RequestMetricsMiddleware) ---------------------------------

HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, URL pattern and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from the request reaching Django to its response, by method and URL pattern.",
    ["method", "route"],
)

# --- handover (inbox.api) ---------------------------------------------------------------

HANDOVER_OUTCOMES = ("created", "reused", "replayed", "rejected", "error")
HANDOVER_REQUESTS = Counter(
    "handover_requests",
    "POST /api/v1/handover answers: created (new session), reused (open session), "
    "replayed (same Idempotency-Key), rejected (4xx), error (5xx).",
    ["outcome"],
)
HANDOVER_UNASSIGNED = Counter(
    "handover_unassigned",
    "Handovers whose routing left the session without an agent, by routing reason.",
    ["reason"],
)

# --- routing (teams.routing) ------------------------------------------------------------

ROUTING_DURATION = Histogram(
    "routing_duration_seconds",
    "Time the routing engine took to pick an agent (or give a reason for nobody).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# --- leads (leads.services) -------------------------------------------------------------

LEAD_SLA_STAGES = ("claim", "contact")
LEAD_SLA_BREACHES = Counter(
    "lead_sla_breaches",
    "Missed lead deadlines recorded by the SLA sweep: claim window or contact window.",
    ["stage"],
)

# --- delivery (outbox.delivery) ---------------------------------------------------------

OUTBOUND_MESSAGES = Counter(
    "outbound_messages",
    "Outcomes of delivery attempts: sent, failed, skipped (final) or retry (tried again "
    "later), by channel.",
    ["channel", "status"],
)

# Known label values start at 0, so that rate() and alerts see a series before the first
# event instead of nothing.
for _outcome in HANDOVER_OUTCOMES:
    HANDOVER_REQUESTS.labels(outcome=_outcome)
for _stage in LEAD_SLA_STAGES:
    LEAD_SLA_BREACHES.labels(stage=_stage)
