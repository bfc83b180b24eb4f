"""One settings module, driven by environment variables only.

With no DATABASE_URL and no REDIS_URL the product runs on embedded defaults: a SQLite
file next to manage.py, and Celery tasks executed in-process once the transaction
commits. Setting DATABASE_URL (PostgreSQL) and REDIS_URL (Redis broker + cache)
switches to the production shape; nothing else has to change. See README.md for the
full list of variables.
"""

from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF
from pythonjsonlogger.core import RESERVED_ATTRS as JSON_LOG_RESERVED_ATTRS

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEV_SECRET_KEY = "dev-insecure-secret-key-change-me-in-production-0123456789"  # noqa: S105

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default=DEV_SECRET_KEY)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Absolute links in emails ("open the lead") are built from this.
PUBLIC_BASE_URL = env("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "anymail",
    "axes",
    "corsheaders",
    "csp",
    "config.apps.ConfigAppConfig",
    "core",
    "teams",
    "audit",
    "inbox",
    "leads",
    "workspace",
    "webhooks",
    "outbox",
]

MIDDLEWARE = [
    # First: every response, redirects and 503s included, carries the request's id, and
    # every log line of the request names it.
    "core.request_id.RequestIdMiddleware",
    # Counts and times every answer, including those given by the middleware below.
    "config.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # 503 with Retry-After, not 500, when a view meets an outage (database, broker);
    # outages raised in the middleware below reach handler400/handler500 (core.api).
    "core.middleware.ServiceUnavailableMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before CommonMiddleware, so that a preflight is answered before anything else runs.
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: refuses logins while an account or address is locked out.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # The agent pages' header (unread notices, presence); lazy, so pages
                # that do not show it (the admin) run none of its queries.
                "workspace.context_processors.agent_header",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("ATOMIC_REQUESTS", False)
# (OUTBOX_PREPARED_STATEMENTS is this switch's former name, still read.)
DB_PREPARED_STATEMENTS = env.bool(
    "DB_PREPARED_STATEMENTS", default=env.bool("OUTBOX_PREPARED_STATEMENTS", default=True)
)
DATABASE_IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if DATABASE_IS_POSTGRES:
    # Django's backend, with a health check of a reused connection that asks its socket
    # instead of sending `SELECT 1` before each request's first query (a round trip on
    # every request; core/backends/postgresql/base.py says what that gives up).
    # DB_HEALTH_CHECK_QUERY=true keeps Django's own backend and its `SELECT 1`.
    if not env.bool("DB_HEALTH_CHECK_QUERY", default=False):
        DATABASES["default"]["ENGINE"] = "core.backends.postgresql"
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # A connection whose server falls silent (its host gone, a network that drops every
    # packet, a failover that leaves the old address dark) is given up within seconds,
    # not the kernel's quarter of an hour: TCP keepalives probe it while a query waits
    # for its answer, and tcp_user_timeout bounds how long what was sent, or a probe,
    # may go unanswered (on Linux it then decides, not keepalives_count: with these
    # values the first probe after 15 s ends it, at about 17 s). A slow query is not
    # cut: a busy server's kernel still answers. The request answers 503 like any
    # outage, within gunicorn's 30 s also when the connection is found dead first (by
    # Django's health check with DB_HEALTH_CHECK_QUERY=true, or in a transaction whose
    # end reconnects) and a new one waits out connect_timeout: about 22 s. A worker's
    # task fails rather than hangs.
    # A live server that stops reading for longer than tcp_user_timeout (a backend
    # blocked on a lock while megabytes of a pipelined batch queue up) ends the
    # connection too: that batch fails and is retried.
    for option, value in {
        "keepalives": 1,
        "keepalives_idle": env.int("DB_KEEPALIVES_IDLE_SECONDS", default=5),
        "keepalives_interval": env.int("DB_KEEPALIVES_INTERVAL_SECONDS", default=3),
        "keepalives_count": env.int("DB_KEEPALIVES_COUNT", default=3),
        "tcp_user_timeout": env.int("DB_TCP_USER_TIMEOUT_MS", default=15_000),
    }.items():
        DATABASES["default"]["OPTIONS"].setdefault(option, value)
    # Values travel apart from the SQL (server-side binding) and a statement a connection
    # runs again and again is parsed and planned once (psycopg prepares it on its 5th
    # run): the handover's pick and inserts, the outbox's claim. Planning was a third of
    # the database's time per handover. Prepared statements live in the server session:
    # behind PgBouncer in transaction mode (before 1.21's max_prepared_statements) set
    # DB_PREPARED_STATEMENTS=false (it also turns off the outbox's per-connection pg_temp
    # functions, session state too).
    DATABASES["default"]["OPTIONS"]["server_side_binding"] = True
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 5 if DB_PREPARED_STATEMENTS else None
else:
    # SQLite: writers take the lock at BEGIN and wait for each other, instead of failing
    # with "database is locked" when background tasks write at the same time.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("timeout", 20)
    DATABASES["default"]["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "teams.User"

# django-axes first: it refuses a locked-out account or address before the password is
# even checked, so the right password is refused too during the cool-off.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
# Messages live server-side: the admin shows a new API key once through a message, and
# the default cookie storage would carry it in a (signed, not encrypted) cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
LOGIN_REDIRECT_URL = "/"

# --- Redis, Celery, cache -------------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="")

if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
    CACHES = {
        "default": {
            "BACKEND": "core.redis_cache.ReusedClientRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "handover",
        }
    }
else:
    # Embedded mode: no broker; tasks run in-process right after the transaction commits.
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# A failing side effect must never turn the request that triggered it into a 500.
CELERY_TASK_EAGER_PROPAGATES = env.bool("CELERY_TASK_EAGER_PROPAGATES", default=False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Fail fast when the broker is down so the request is not held; the row stays
# "pending" and a periodic task re-enqueues it.
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "max_retries": 1,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
# Embedded mode has no worker: run each task in a background thread so that a slow CRM
# or mail server never holds up an HTTP response.
EMBEDDED_TASKS_IN_BACKGROUND = env.bool("EMBEDDED_TASKS_IN_BACKGROUND", default=not REDIS_URL)
# Database connections an SLA sweep drains a backlog with (more than one batch of 500
# due): its own and helper threads'; SKIP LOCKED gives each due lead to one of them.
SLA_SWEEP_CONNECTIONS = env.int("SLA_SWEEP_CONNECTIONS", default=2)
# How often the SLA sweeps run: a breach is noticed at most this long after its deadline.
SLA_SWEEP_SECONDS = env.float("SLA_SWEEP_SECONDS", default=30.0)
# Periodic jobs. Celery beat runs them in production; in embedded mode `bin/run` starts
# `manage.py run_periodic_jobs`, which runs the same schedule in-process.
CELERY_BEAT_SCHEDULE: dict = {
    # Stage 1 and 2 SLA sweeps: missed claim and contact deadlines.
    "leads-check-sla": {"task": "leads.tasks.check_sla", "schedule": SLA_SWEEP_SECONDS},
    "leads-retry-unassigned": {"task": "leads.tasks.retry_unassigned_leads", "schedule": 60.0},
    # Open sessions nobody could take: try again, least recently tried first.
    "inbox-retry-unassigned-sessions": {
        "task": "inbox.tasks.retry_unassigned_sessions",
        "schedule": 60.0,
    },
    # Conversations not accepted within the tenant's accept window move on.
    "inbox-sweep-accept-windows": {"task": "inbox.tasks.sweep_accept_windows", "schedule": 15.0},
    # Agents whose pages sent no heartbeat for the tenant's auto-away minutes become away.
    "teams-mark-idle-agents-away": {"task": "teams.tasks.mark_idle_agents_away", "schedule": 60.0},
    "inbox-purge-idempotency-keys": {
        "task": "inbox.tasks.purge_idempotency_keys",
        "schedule": 3600.0,
    },
    "outbox-purge-old-messages": {"task": "outbox.tasks.purge_old_messages", "schedule": 3600.0},
    "webhooks-disable-failing-endpoints": {
        "task": "webhooks.tasks.disable_failing_endpoints",
        "schedule": 3600.0,
    },
}
# The periodic runs have a queue (and a worker: `periodic` in the Procfile) of their own,
# so that nothing else can delay the SLA clock. On-demand calls of the same tasks (an agent
# is back: route their waiting work now) go to `default`, the Procfile's `worker`.
for _entry in CELERY_BEAT_SCHEDULE.values():
    _entry["options"] = {"queue": "periodic"}
CELERY_TASK_DEFAULT_QUEUE = "default"
# Every task has a time limit: the soft one raises inside the task (which then rolls its
# transaction back), the hard one kills the worker child.
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=120)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=150)

# --- Outbox: every message we send (outbox/, `manage.py outbox_worker`) ----------------
# Sending threads per outbox worker process.
OUTBOX_WORKER_THREADS = env.int("OUTBOX_WORKER_THREADS", default=8)
# A worker also looks for due messages this often (retries; NOTIFY wakes it at once).
OUTBOX_POLL_SECONDS = env.float("OUTBOX_POLL_SECONDS", default=1.0)
# Wall-clock limit of one send, however slowly the far side answers.
OUTBOX_SEND_DEADLINE_SECONDS = env.float("OUTBOX_SEND_DEADLINE_SECONDS", default=20.0)
# How long a claimed message belongs to its worker; must exceed the send deadline. A
# message whose worker died is claimed again when its lease ends.
OUTBOX_LEASE_SECONDS = env.int("OUTBOX_LEASE_SECONDS", default=60)
# Tries in all for a message (first one included), unless its channel says otherwise.
OUTBOX_MAX_ATTEMPTS = env.int("OUTBOX_MAX_ATTEMPTS", default=6)
# Retry n waits OUTBOX_RETRY_BASE_SECONDS * 2**(n-1), at most OUTBOX_RETRY_MAX_DELAY_SECONDS,
# plus up to 10% jitter.
OUTBOX_RETRY_BASE_SECONDS = env.float("OUTBOX_RETRY_BASE_SECONDS", default=5.0)
OUTBOX_RETRY_MAX_DELAY_SECONDS = env.float("OUTBOX_RETRY_MAX_DELAY_SECONDS", default=300.0)
# Messages of one endpoint (one tenant's CRM, the mail provider) in flight at once.
OUTBOX_ENDPOINT_CONCURRENCY = env.int("OUTBOX_ENDPOINT_CONCURRENCY", default=4)
# Webhooks retry for about a day: the first retry after WEBHOOK_RETRY_BASE_SECONDS, then
# doubling up to WEBHOOK_RETRY_MAX_DELAY_SECONDS, WEBHOOK_MAX_ATTEMPTS tries in all.
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=16)
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=15.0)
WEBHOOK_RETRY_MAX_DELAY_SECONDS = env.float("WEBHOOK_RETRY_MAX_DELAY_SECONDS", default=14400.0)
# An endpoint with no successful delivery for this long is turned off (admins are told).
WEBHOOK_DISABLE_AFTER_HOURS = env.float("WEBHOOK_DISABLE_AFTER_HOURS", default=72.0)
# Sent, failed and skipped messages are deleted after this many days (sessions and
# notices then no longer show how their message went).
OUTBOX_RETENTION_DAYS = env.int("OUTBOX_RETENTION_DAYS", default=90)
# A worker remembers a tenant's usable CRM integration or webhook endpoint (and its
# decrypted key or signer) this long: a change reaches running workers within it.
OUTBOX_LOOKUP_CACHE_SECONDS = env.float("OUTBOX_LOOKUP_CACHE_SECONDS", default=2.0)

# --- Short-lived per-process caches of the hot path ------------------------------------
# A save or delete in the same process is seen at once; other processes see it within
# the lifetime. In memory: no cache server can make a request wait.
# API key → tenant: a revoked key stops working everywhere within this (keep it <= 5).
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=4.0)
# Routing configuration: assignment configs, team schedules, the default team, the tenant.
ROUTING_CONFIG_CACHE_SECONDS = env.float("ROUTING_CONFIG_CACHE_SECONDS", default=5.0)

# --- CRM integration (WhatsApp confirmation messages) ---------------------------------
# Fernet keys that encrypt the CRM API keys stored in the database (comma-separated).
# The first key encrypts; every key decrypts. To rotate: put a new key first, run
# `manage.py rotate_crm_keys`, then remove the old key. Generate one with
#   python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
# Unset, a development key is derived from SECRET_KEY (see core/crypto.py): production
# must set this, or changing SECRET_KEY makes every stored CRM API key unreadable.
CRM_ENCRYPTION_KEYS = env.list("CRM_ENCRYPTION_KEYS", default=[])
# Tenant-given addresses must be public https; these open them up for local testing.
# Applies to every address we call for a tenant (CRM apiUrl, webhook endpoints); the
# older CRM_ALLOW_HTTP and CRM_ALLOW_PRIVATE_NETWORKS are read as aliases.
OUTBOUND_ALLOW_HTTP = env.bool("OUTBOUND_ALLOW_HTTP", default=env.bool("CRM_ALLOW_HTTP", False))
OUTBOUND_ALLOW_PRIVATE_NETWORKS = env.bool(
    "OUTBOUND_ALLOW_PRIVATE_NETWORKS", default=env.bool("CRM_ALLOW_PRIVATE_NETWORKS", False)
)

# --- Internationalisation -------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": env(
            "STATICFILES_BACKEND",
            default="django.contrib.staticfiles.storage.StaticFilesStorage",
        )
    },
}

# --- Email ----------------------------------------------------------------------------
RESEND_API_KEY = env("RESEND_API_KEY", default="")
EMAIL_BACKEND = env(
    "EMAIL_BACKEND",
    default=(
        "outbox.email_backends.ResendEmailBackend"
        if RESEND_API_KEY
        else "config.email.StderrConsoleBackend"
    ),
)
ANYMAIL = {
    "RESEND_API_KEY": RESEND_API_KEY,
    # Per connect and per read; the outbox's send deadline bounds the whole call.
    "REQUESTS_TIMEOUT": (5, OUTBOX_SEND_DEADLINE_SECONDS),
}
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Handover <noreply@localhost>")
# SMTP backends only: without it a hung mail server holds the worker forever.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=30)

# --- Metrics --------------------------------------------------------------------------
# GET /metrics (Prometheus) answers only with `Authorization: Bearer <METRICS_TOKEN>`;
# unset, the page does not exist (404). See config/metrics.py for PROMETHEUS_MULTIPROC_DIR.
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# --- API ------------------------------------------------------------------------------
# While the database or the broker cannot be reached, every page answers 503
# `service_unavailable` with this Retry-After (seconds).
SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS = env.int(
    "SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS", default=5
)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.StrictJSONParser"],
    # drf-spectacular's AutoSchema that also documents every operation's error responses.
    "DEFAULT_SCHEMA_CLASS": "teams.schema.ApiSchema",
    "EXCEPTION_HANDLER": "core.api.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Handover API",
    "DESCRIPTION": "Conversation handover and lead routing for many tenants.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # 3.1 for `webhooks`: every event we POST to tenants, with an example.
    "OAS_VERSION": "3.1.0",
    # An agent's presence is `status` in the presence API, as other enums are elsewhere.
    "ENUM_NAME_OVERRIDES": {"PresenceEnum": "teams.models.Presence"},
    "WEBHOOKS": [
        f"webhooks.schema.{name.replace('.', '_')}"
        for name in (
            "session.created",
            "session.assigned",
            "session.unassigned",
            "session.closed",
            "session.accepted",
            "session.accept_missed",
            "lead.created",
            "lead.assigned",
            "lead.claimed",
            "lead.contacted",
            "lead.sla_breached",
            "lead.reassigned",
            "lead.closed",
            "message.failed",
        )
    ],
}
# Requests larger than this are refused before parsing (413 on the API).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=64 * 1024)

# API keys: `last_used_at` is written at most once per this many seconds per key.
API_KEY_LAST_USED_RESOLUTION_SECONDS = env.int("API_KEY_LAST_USED_RESOLUTION_SECONDS", default=60)

# --- Logging --------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
# "plain" (default): one human-readable line per record. "json": one JSON object per line
# (python-json-logger) for a log collector. Both carry the request id, tenant, session,
# lead and outbound message a line is about (core.log_context); the plain format shows
# them in brackets when they are set.
LOG_FORMAT = env("LOG_FORMAT", default="plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ValueError(f'LOG_FORMAT must be "plain" or "json", not {LOG_FORMAT!r}.')
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"log_context": {"()": "core.log_context.ContextFilter"}},
    "formatters": {
        "plain": {
            "()": "core.log_context.PlainFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s%(context)s %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": [
                "levelname",
                "name",
                "message",
                "request_id",
                "tenant_id",
                "session_id",
                "lead_id",
                "message_id",
            ],
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
            # Django passes the request to its own lines (django.request): its text holds
            # the query string, where an API key may be (?apiKey=). Never written out.
            "reserved_attrs": [*JSON_LOG_RESERVED_ATTRS, "request"],
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["log_context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
    },
}

# --- Login throttling (django-axes, both /admin/login/ and /accounts/login/) ----------
# After LOGIN_FAILURE_LIMIT failures for one account, or from one address, logins are
# refused (the right password too) for LOGIN_COOLOFF_MINUTES. Admins unlock under
# "Access attempts" in the admin, or with `manage.py axes_reset`.
AXES_ENABLED = env.bool("LOGIN_THROTTLING_ENABLED", default=True)
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_MINUTES = env.int("LOGIN_COOLOFF_MINUTES", default=15)
AXES_COOLOFF_TIME = timedelta(minutes=AXES_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_USERNAME_FORM_FIELD = "username"
# The account is the email in lower case, however it was typed.
AXES_USERNAME_CALLABLE = "config.lockout.username"
AXES_RESET_ON_SUCCESS = True
# Attempts during a lockout are refused without counting, so "try again in N minutes"
# holds even for someone who tries again early.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The lockout page with the minutes actually left (axes only knows the whole cool-off).
AXES_LOCKOUT_CALLABLE = "config.lockout.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
# The client's address is REMOTE_ADDR; behind TRUSTED_PROXY_COUNT proxies that each append
# to X-Forwarded-For, it is the entry the outermost proxy added (entries left of it are
# the client's own to forge).
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
AXES_CLIENT_IP_CALLABLE = "config.lockout.client_ip"

# --- API throttling -------------------------------------------------------------------
# Failed API-key attempts allowed per address per minute; beyond it `429
# too_many_attempts` with Retry-After. Counted in the cache (Redis in production).
API_KEY_FAILURES_PER_MINUTE = env.int("API_KEY_FAILURES_PER_MINUTE", default=20)
# A cache that hangs must not hold a request: give up on it after this long and let the
# request through unthrottled. 80 ms, so that with the request's own work a hung cache
# keeps it under 100 ms more than a healthy one (at 0.1 s it measured 101-103 ms).
THROTTLE_CACHE_TIMEOUT_SECONDS = env.float("THROTTLE_CACHE_TIMEOUT_SECONDS", default=0.08)
# The throttle's counters: the same Redis as "default" but with connections of their own
# that give up after THROTTLE_CACHE_TIMEOUT_SECONDS (other cache uses keep redis-py's
# defaults); in embedded mode this process's memory.
CACHES["throttle"] = (
    {
        **CACHES["default"],
        "OPTIONS": {
            "socket_connect_timeout": THROTTLE_CACHE_TIMEOUT_SECONDS,
            "socket_timeout": THROTTLE_CACHE_TIMEOUT_SECONDS,
        },
    }
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "throttle"}
)

# --- CORS (django-cors-headers), the API only -----------------------------------------
# Browser origins allowed to call /api/ (comma-separated, e.g. https://app.example.com).
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = [
    "accept",
    "content-type",
    "x-api-key",
    "idempotency-key",
    "x-csrftoken",
    "x-request-id",
]
CORS_EXPOSE_HEADERS = ["Retry-After", "X-Request-ID", "Idempotent-Replayed"]
CORS_ALLOW_CREDENTIALS = env.bool("CORS_ALLOW_CREDENTIALS", default=False)
CORS_PREFLIGHT_MAX_AGE = 600

# --- Security headers ------------------------------------------------------------------
# Content-Security-Policy: scripts only from us (inline ones carry the request's nonce),
# no framing, no plugins. Inline style attributes stay allowed (admin and Swagger UI use
# them; styles cannot run code).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
PERMISSIONS_POLICY = {
    feature: []
    for feature in (
        "accelerometer",
        "camera",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "payment",
        "usb",
    )
}
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# HTTP Strict Transport Security: 0 (off) until the site is served over https only.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)

# --- Security (production) ------------------------------------------------------------
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# A load balancer's plain-http health check must get an answer, not a redirect.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
