"""The production stack as the README starts it: `honcho start` runs every process of the
Procfile (gunicorn, the outbox worker, the default and periodic Celery workers, beat),
and a handover made through gunicorn reaches the tenant's CRM through the outbox worker.

Uses the test database (the processes see this test's committed rows) and a Redis of its
own on a spare port, so no other test's workers can take its tasks.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet

from core.actor import Actor
from teams.services import create_api_key
from tests.e2e.processes import database_url_for_tests, free_port, processes
from tests.factories import MembershipFactory
from tests.inbox.factories import CrmIntegrationFactory

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

PROCESSES = ("web", "outbox", "worker", "periodic", "beat")
START_TIMEOUT = 60


class _Crm(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).received.append(
            {"path": self.path, "key": self.headers.get("Idempotency-Key"), "at": time.time()}
        )
        body = b'{"messages": [{"id": "wamid.stack"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def redis_url():
    with processes() as group:
        yield group.redis().url


@pytest.fixture
def crm():
    _Crm.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Crm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Crm.received
    server.shutdown()


def test_honcho_starts_every_process_and_a_handover_reaches_the_crm(
    tenant, redis_url, crm, tmp_path, settings
):
    crm_url, received = crm
    encryption_key = Fernet.generate_key().decode()
    settings.CRM_ENCRYPTION_KEYS = [encryption_key]
    MembershipFactory(tenant=tenant)
    CrmIntegrationFactory(tenant=tenant, api_url=crm_url)
    _, api_key = create_api_key(tenant=tenant, name="stack", actor=Actor.system())

    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "DATABASE_URL": database_url_for_tests(),
        "REDIS_URL": redis_url,
        "SECRET_KEY": "stack-test-" + "s" * 50,
        "CRM_ENCRYPTION_KEYS": encryption_key,
        "ALLOWED_HOSTS": "127.0.0.1",
        "CRM_ALLOW_HTTP": "true",
        "CRM_ALLOW_PRIVATE_NETWORKS": "true",
        "WEB_CONCURRENCY": "1",
        "CELERY_CONCURRENCY": "1",
        "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"),
        "OUTBOX_POLL_SECONDS": "5",  # the NOTIFY wake-up must do the work
        "PYTHONUNBUFFERED": "1",
    }
    output: list[str] = []
    stack = subprocess.Popen(
        [str(Path(venv_bin) / "honcho"), "start", "--port", str(port)],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    threading.Thread(target=lambda: output.extend(stack.stdout), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        ready = {
            "web": "Booting worker",
            "outbox": "Outbox worker started",
            "worker": "ready.",
            "periodic": "ready.",
            "beat": "beat: Starting",
        }
        while time.monotonic() < deadline:
            text = "".join(output)
            started = {name for name, marker in ready.items() if _line_of(text, name, marker)}
            if started == set(PROCESSES):
                break
            assert stack.poll() is None, f"honcho exited early:\n{text}"
            time.sleep(0.3)
        text = "".join(output)
        missing = [n for n, marker in ready.items() if not _line_of(text, n, marker)]
        assert not missing, f"not started: {missing}\n{text}"

        health = requests.get(f"{base}/healthz", timeout=5).json()
        assert health["status"] == "ok", health
        assert health["broker"]["ok"] is True

        sent_at = time.time()
        answer = requests.post(
            f"{base}/api/v1/handover",
            json={"contactId": "+4915100001111"},
            headers={"X-API-Key": api_key},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["confirmationMessage"] == "queued"
        until = time.monotonic() + 10
        while not received and time.monotonic() < until:
            time.sleep(0.05)
        assert len(received) == 1, "".join(output)
        assert received[0]["path"] == "/api/meta/PN1/messages"
        # Woken by NOTIFY, not by the 5-second poll.
        assert received[0]["at"] - sent_at < 1.0
    finally:
        os.killpg(stack.pid, signal.SIGTERM)
        try:
            stack.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait(5)


def _line_of(text: str, process: str, marker: str) -> bool:
    """Whether honcho printed `marker` from `process` ("12:00:00 web.1 | ...")."""
    for line in text.splitlines():
        prefix, _, rest = line.partition("|")
        names = prefix.split()
        if names and names[-1].startswith(f"{process}.") and marker in rest:
            return True
    return False
