"""The one settings module switches shape on DATABASE_URL and REDIS_URL alone.

Each case loads the settings in a fresh interpreter with a controlled environment and
prints what the product would run with. Nothing connects to anything, so these run
anywhere.
"""

import json
import math
import os
import subprocess
import sys

import pytest
from django.conf import settings

# Variables that would change what is being checked here.
_CONFIG_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_TASK_ALWAYS_EAGER",
    "DB_CONN_MAX_AGE",
    "DB_PREPARED_STATEMENTS",
    "DB_HEALTH_CHECK_QUERY",
    "DB_KEEPALIVES_IDLE_SECONDS",
    "DB_KEEPALIVES_INTERVAL_SECONDS",
    "DB_KEEPALIVES_COUNT",
    "DB_TCP_USER_TIMEOUT_MS",
    "DJANGO_SETTINGS_MODULE",
    "OUTBOUND_ALLOW_HTTP",
    "OUTBOUND_ALLOW_PRIVATE_NETWORKS",
    "CRM_ALLOW_HTTP",
    "CRM_ALLOW_PRIVATE_NETWORKS",
)

_DUMP_SETTINGS = """
import json
import environ
# Only the variables this test passes may configure the product, not a developer's .env.
environ.Env.read_env = classmethod(lambda *args, **kwargs: None)
import django
django.setup()
from django.conf import settings
from config.celery import app
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"],
    "name": str(db["NAME"]),
    "host": db.get("HOST", ""),
    "port": db.get("PORT", ""),
    "user": db.get("USER", ""),
    "options": db.get("OPTIONS", {}),
    "conn_max_age": db.get("CONN_MAX_AGE", 0),
    "database_is_postgres": settings.DATABASE_IS_POSTGRES,
    "broker_url": settings.CELERY_BROKER_URL,
    "always_eager": settings.CELERY_TASK_ALWAYS_EAGER,
    "celery_broker_url": app.conf.broker_url,
    "celery_always_eager": app.conf.task_always_eager,
    "cache_backend": settings.CACHES["default"]["BACKEND"],
    "cache_location": settings.CACHES["default"].get("LOCATION", ""),
    "outbound_allow_http": settings.OUTBOUND_ALLOW_HTTP,
    "outbound_allow_private_networks": settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS,
}))
"""

POSTGRES_URL = "postgres://u@h:5432/db"
REDIS_URL = "redis://h:6379/0"


def _load_settings(**env_vars) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env.update(env_vars)
    result = subprocess.run(
        [sys.executable, "-c", _DUMP_SETTINGS],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_without_urls_the_product_runs_embedded():
    loaded = _load_settings()

    assert loaded["engine"] == "django.db.backends.sqlite3"
    assert loaded["name"] == str(settings.BASE_DIR / "db.sqlite3")
    assert loaded["database_is_postgres"] is False
    assert loaded["options"]["timeout"] == 20
    assert loaded["always_eager"] is True
    assert loaded["broker_url"] == "memory://"
    assert loaded["celery_broker_url"] == "memory://"
    assert loaded["celery_always_eager"] is True
    assert loaded["cache_backend"] == "django.core.cache.backends.locmem.LocMemCache"


def test_with_both_urls_the_product_runs_on_postgres_and_redis():
    loaded = _load_settings(DATABASE_URL=POSTGRES_URL, REDIS_URL=REDIS_URL)

    assert loaded["engine"] == "core.backends.postgresql"
    assert (loaded["name"], loaded["host"], loaded["port"], loaded["user"]) == (
        "db",
        "h",
        5432,
        "u",
    )
    assert loaded["database_is_postgres"] is True
    assert loaded["conn_max_age"] == 60
    assert loaded["options"]["connect_timeout"] == 5
    # Values bound on the server; a statement run 5 times on a connection is prepared.
    assert loaded["options"]["server_side_binding"] is True
    assert loaded["options"]["prepare_threshold"] == 5
    assert loaded["broker_url"] == REDIS_URL
    assert loaded["celery_broker_url"] == REDIS_URL
    assert loaded["always_eager"] is False
    assert loaded["celery_always_eager"] is False
    assert loaded["cache_backend"] == "core.redis_cache.ReusedClientRedisCache"
    assert loaded["cache_location"] == REDIS_URL


def test_db_health_check_query_keeps_django_s_own_backend_and_its_select_1():
    loaded = _load_settings(DATABASE_URL=POSTGRES_URL, DB_HEALTH_CHECK_QUERY="true")

    assert loaded["engine"] == "django.db.backends.postgresql"
    assert loaded["database_is_postgres"] is True
    assert loaded["conn_max_age"] == 60


@pytest.mark.parametrize(
    ("env_vars", "engine", "broker_url", "always_eager"),
    [
        ({"DATABASE_URL": POSTGRES_URL}, "core.backends.postgresql", "memory://", True),
        ({"REDIS_URL": REDIS_URL}, "django.db.backends.sqlite3", REDIS_URL, False),
    ],
    ids=["postgres-only", "redis-only"],
)
def test_each_url_switches_only_its_own_part(env_vars, engine, broker_url, always_eager):
    loaded = _load_settings(**env_vars)

    assert loaded["engine"] == engine
    assert loaded["broker_url"] == broker_url
    assert loaded["always_eager"] is always_eager


def test_a_silent_database_connection_is_given_up_within_gunicorns_timeout():
    loaded = _load_settings(DATABASE_URL=POSTGRES_URL)
    options = loaded["options"]
    assert (options["keepalives"], options["tcp_user_timeout"]) == (1, 15_000)
    # Linux ends the connection at the first keepalive probe past tcp_user_timeout (the
    # count no longer decides); then a new connection may wait out connect_timeout.
    idle, interval = options["keepalives_idle"], options["keepalives_interval"]
    user_timeout = options["tcp_user_timeout"] / 1000
    found_dead = idle + interval * max(1, math.ceil((user_timeout - idle) / interval))
    # A sync worker (the Procfile's) is killed after gunicorn's 30 s timeout.
    assert found_dead + options["connect_timeout"] < 25

    tuned = _load_settings(
        DATABASE_URL=f"{POSTGRES_URL}?keepalives_idle=60",
        DB_TCP_USER_TIMEOUT_MS="5000",
        DB_KEEPALIVES_COUNT="2",
    )["options"]
    assert (tuned["keepalives_idle"], tuned["tcp_user_timeout"]) == (60, 5000)
    assert tuned["keepalives_count"] == 2


def test_prepared_statements_turn_off_for_a_pooler_in_transaction_mode():
    loaded = _load_settings(DATABASE_URL=POSTGRES_URL, DB_PREPARED_STATEMENTS="false")

    assert loaded["options"]["prepare_threshold"] is None
    assert loaded["options"]["server_side_binding"] is True  # unnamed statements are fine


def test_deploy_check_refuses_development_secrets(settings):
    import pytest
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.SECRET_KEY = settings.DEV_SECRET_KEY
    settings.CRM_ENCRYPTION_KEYS = []
    with pytest.raises(SystemCheckError) as excinfo:
        call_command("check", "--deploy", "--tag", "security", "--fail-level", "ERROR")
    assert "handover.E001" in str(excinfo.value) and "handover.E002" in str(excinfo.value)

    settings.SECRET_KEY = "a-real-secret-" + "x" * 50
    settings.CRM_ENCRYPTION_KEYS = ["lSwFB0uI8mL0eTgtJxlK3ZWd6i8m7x1YH4fdHqVjR1E="]
    call_command("check", "--deploy", "--tag", "security", "--fail-level", "ERROR")


def test_a_send_deadline_that_could_outlive_its_lease_is_refused(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.OUTBOX_SEND_DEADLINE_SECONDS = 60
    settings.OUTBOX_LEASE_SECONDS = 60
    with pytest.raises(SystemCheckError) as excinfo:
        call_command("check")
    assert "handover.E010" in str(excinfo.value)

    settings.OUTBOX_SEND_DEADLINE_SECONDS = 20
    call_command("check")


@pytest.mark.parametrize(
    ("env_vars", "expected"),
    [
        ({}, (False, False)),
        ({"OUTBOUND_ALLOW_HTTP": "1", "OUTBOUND_ALLOW_PRIVATE_NETWORKS": "1"}, (True, True)),
        # The CRM-only names of earlier releases keep working.
        ({"CRM_ALLOW_HTTP": "true", "CRM_ALLOW_PRIVATE_NETWORKS": "true"}, (True, True)),
        ({"CRM_ALLOW_HTTP": "true", "OUTBOUND_ALLOW_HTTP": "false"}, (False, False)),
    ],
)
def test_outbound_guards_open_only_when_asked(env_vars, expected):
    loaded = _load_settings(**env_vars)
    assert (loaded["outbound_allow_http"], loaded["outbound_allow_private_networks"]) == expected
