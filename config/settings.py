"""One settings module, driven by environment variables only.

With no DATABASE_URL and no REDIS_URL the product runs on embedded defaults: a SQLite
file next to manage.py, and Celery tasks executed in-process once the transaction
commits. Setting DATABASE_URL (PostgreSQL) and REDIS_URL (Redis broker + cache)
switches to the production shape; nothing else has to change. See README.md for the
full list of variables.
"""

from pathlib import Path

import environ

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
    "config.apps.ConfigAppConfig",
    "core",
    "teams",
    "audit",
    "inbox",
    "leads",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("ATOMIC_REQUESTS", False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
else:
    # SQLite: writers take the lock at BEGIN and wait for each other, instead of failing
    # with "database is locked" when background tasks write at the same time.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("timeout", 20)
    DATABASES["default"]["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
DATABASE_IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "teams.User"

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
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
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
# Periodic jobs. Celery beat runs them in production; in embedded mode `bin/run` starts
# `manage.py run_periodic_jobs`, which runs the same schedule in-process.
CELERY_BEAT_SCHEDULE: dict = {
    # Confirmations that could not be enqueued (broker down) or whose task was lost.
    "inbox-requeue-pending-confirmations": {
        "task": "inbox.tasks.requeue_pending_confirmations",
        "schedule": 60.0,
    },
    # Stage 1 and 2 SLA sweeps: missed claim and contact deadlines.
    "leads-check-sla": {"task": "leads.tasks.check_sla", "schedule": 30.0},
    "leads-retry-unassigned": {"task": "leads.tasks.retry_unassigned_leads", "schedule": 60.0},
    # Lead notification emails that could not be enqueued (broker down) or whose task was lost.
    "leads-requeue-pending-emails": {
        "task": "leads.tasks.requeue_pending_notification_emails",
        "schedule": 60.0,
    },
    "inbox-purge-idempotency-keys": {
        "task": "inbox.tasks.purge_idempotency_keys",
        "schedule": 3600.0,
    },
    # Open sessions nobody could take: try again, least recently tried first.
    "inbox-retry-unassigned-sessions": {
        "task": "inbox.tasks.retry_unassigned_sessions",
        "schedule": 60.0,
    },
}

# --- CRM integration (WhatsApp confirmation messages) ---------------------------------
# Fernet keys that encrypt the CRM API keys stored in the database (comma-separated).
# The first key encrypts; every key decrypts. To rotate: put a new key first, run
# `manage.py rotate_crm_keys`, then remove the old key. Generate one with
#   python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
# Unset, a development key is derived from SECRET_KEY (see inbox/crypto.py): production
# must set this, or changing SECRET_KEY makes every stored CRM API key unreadable.
CRM_ENCRYPTION_KEYS = env.list("CRM_ENCRYPTION_KEYS", default=[])
# A tenant's CRM apiUrl must be https and public; these open it up for local testing.
CRM_ALLOW_HTTP = env.bool("CRM_ALLOW_HTTP", default=False)
CRM_ALLOW_PRIVATE_NETWORKS = env.bool("CRM_ALLOW_PRIVATE_NETWORKS", default=False)
# Timeout of one request to the CRM's WhatsApp endpoint.
CRM_HTTP_TIMEOUT_SECONDS = env.float("CRM_HTTP_TIMEOUT_SECONDS", default=10.0)
# Retries after the first attempt, for timeouts, connection errors, 429 and 5xx.
CRM_MAX_RETRIES = env.int("CRM_MAX_RETRIES", default=5)
# Retry n waits CRM_RETRY_BACKOFF_SECONDS * 2**n seconds (at most 300) plus jitter.
CRM_RETRY_BACKOFF_SECONDS = env.float("CRM_RETRY_BACKOFF_SECONDS", default=5.0)
# An attempt that started less than this long ago and has not finished blocks another
# (a duplicate enqueue). Keep it well above CRM_HTTP_TIMEOUT_SECONDS.
CRM_ATTEMPT_LEASE_SECONDS = env.int("CRM_ATTEMPT_LEASE_SECONDS", default=60)
# A confirmation still pending this long after it was queued is enqueued again.
CRM_REQUEUE_AFTER_SECONDS = env.int("CRM_REQUEUE_AFTER_SECONDS", default=120)

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
        "anymail.backends.resend.EmailBackend"
        if RESEND_API_KEY
        else "config.email.StderrConsoleBackend"
    ),
)
ANYMAIL = {"RESEND_API_KEY": RESEND_API_KEY}
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Handover <noreply@localhost>")
# Lead notification emails (leads/emails.py). Retries after the first attempt, for
# connection errors, timeouts, 429 and 5xx; anything else fails at once.
EMAIL_MAX_RETRIES = env.int("EMAIL_MAX_RETRIES", default=5)
# Retry n waits EMAIL_RETRY_BACKOFF_SECONDS * 2**n seconds (at most 300) plus jitter.
EMAIL_RETRY_BACKOFF_SECONDS = env.float("EMAIL_RETRY_BACKOFF_SECONDS", default=5.0)
# An email still pending (never attempted) this long after it was created is enqueued again.
EMAIL_REQUEUE_AFTER_SECONDS = env.int("EMAIL_REQUEUE_AFTER_SECONDS", default=120)
# While one attempt sends an email, a duplicate task for it waits (a lease in the cache).
# Keep it above the send timeout (Anymail: 30 s; SMTP: EMAIL_TIMEOUT).
EMAIL_ATTEMPT_LEASE_SECONDS = env.int("EMAIL_ATTEMPT_LEASE_SECONDS", default=60)
# SMTP backends only: without it a hung mail server holds the worker forever.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=30)

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
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
}
# Requests larger than this are refused before parsing (413 on the API).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=64 * 1024)

# API keys: `last_used_at` is written at most once per this many seconds per key.
API_KEY_LAST_USED_RESOLUTION_SECONDS = env.int("API_KEY_LAST_USED_RESOLUTION_SECONDS", default=60)

# --- Logging --------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
    },
}

# --- Security (production) ------------------------------------------------------------
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
