"""GET /healthz: what a load balancer or an uptime monitor sees.

The failure cases start a fresh interpreter, because "the database is unreachable" and
"the broker is down" are decided by settings read once at start-up.
"""

import json
import os
import subprocess
import sys
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from outbox.models import OutboundMessage
from outbox.services import queue_message

pytestmark = pytest.mark.django_db

# Variables that would change what the subprocess is configured to do.
_CONFIG_VARS = ("DATABASE_URL", "REDIS_URL", "CELERY_TASK_ALWAYS_EAGER", "ALLOWED_HOSTS")

_GET_HEALTHZ = """
import json
import environ
# Only the variables this test passes may configure the product, not a developer's .env.
environ.Env.read_env = classmethod(lambda *args, **kwargs: None)
import django
django.setup()
from django.test import Client
response = Client().get("/healthz")
print(json.dumps({"status_code": response.status_code, "body": response.json()}))
"""


def _get_healthz(**env_vars) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env.update(env_vars)
    result = subprocess.run(
        [sys.executable, "-c", _GET_HEALTHZ],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return out["status_code"], out["body"]


def _url_of_the_test_database() -> str:
    """A DATABASE_URL for the database this test session really uses.

    The environment's DATABASE_URL names a database the test runner never creates
    (it makes `test_<name>` next to it), so pointing a subprocess at it would test
    whether that database happens to exist rather than the health check.
    """
    if connection.vendor != "postgresql":
        return "sqlite:///:memory:"
    db = connection.settings_dict
    user = quote(db["USER"] or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{user}{password}@{db['HOST'] or 'localhost'}{port}/{db['NAME']}"


def test_healthz_reports_ok(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True, "engine": connection.vendor}
    assert body["broker"]["ok"] is True
    assert body["outbox"] == {"ok": True, "due": 0, "oldest_due_seconds": 0.0}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_reports_the_delivery_backlog(client, tenant):
    with transaction.atomic():
        for _ in range(3):
            queue_message(tenant=tenant, channel="email", target="a@example.test", payload={})
    OutboundMessage.all_tenants.update(next_attempt_at=timezone.now() - timedelta(minutes=2))

    outbox = client.get("/healthz").json()["outbox"]

    assert outbox["due"] == 3
    assert 119 <= outbox["oldest_due_seconds"] <= 180


def test_healthz_is_get_only(client):
    assert client.post("/healthz").status_code == 405


def test_unreachable_database_is_503():
    status_code, body = _get_healthz(DATABASE_URL="postgres://postgres@127.0.0.1:1/nowhere")

    assert status_code == 503
    assert body["status"] == "unavailable"
    assert body["database"]["ok"] is False
    assert body["database"]["engine"] == "postgresql"
    assert body["database"]["error"] == "OperationalError"
    # Embedded mode (no REDIS_URL): the broker part is still fine.
    assert body["broker"]["ok"] is True


@pytest.mark.skipif(
    not os.environ.get("REDIS_URL"),
    reason="needs a running Redis: set REDIS_URL=redis://… to check the broker probe",
)
def test_reachable_broker_is_ok():
    status_code, body = _get_healthz(
        DATABASE_URL=_url_of_the_test_database(), REDIS_URL=os.environ["REDIS_URL"]
    )

    assert body["broker"]["ok"] is True, body
    assert body["broker"]["mode"] == "broker"
    assert body["broker"]["transport"] == "redis"
    assert body["database"]["ok"] is True, body
    assert (status_code, body["status"]) == (200, "ok")


def test_unreachable_broker_is_degraded_but_200():
    status_code, body = _get_healthz(
        DATABASE_URL="sqlite:///:memory:", REDIS_URL="redis://127.0.0.1:1/0"
    )

    assert status_code == 200
    assert body["status"] == "degraded"
    assert body["database"]["ok"] is True
    assert body["broker"]["ok"] is False
    assert body["broker"]["mode"] == "broker"
    assert body["broker"]["error"]
