"""The production shape, end to end: PostgreSQL, Redis and a real Celery worker process.

The API runs in the test process; the confirmation task is published to Redis and runs
in a separate `celery -A config worker` process that reads and writes the test database.
The CRM is a real local HTTP server (pytest-httpserver). Each test uses its own queue, so
no other worker listening on the same Redis can take its tasks.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import quote

import pytest
from django.conf import settings
from rest_framework.test import APIClient
from werkzeug import Response

from config.celery import app as celery_app
from inbox.models import ConfirmationStatus, InboxSession
from tests.factories import MembershipFactory
from tests.inbox.factories import CONFIRMATION_TEXT, CRM_API_KEY, CrmIntegrationFactory

# On SQLite the `postgres` mark skips these (and the summary counts them as such); on
# PostgreSQL without a broker there is nothing for a worker to consume.
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        settings.DATABASE_IS_POSTGRES and not settings.REDIS_URL,
        reason="needs Redis and a Celery worker: set REDIS_URL=redis://… to run it",
    ),
]

URL = "/api/v1/handover"
PHONE_NUMBER_ID = "PN1"
MESSAGES_PATH = f"/api/meta/{PHONE_NUMBER_ID}/messages"
WORKER_READY_TIMEOUT = 30
WORKER_STOP_TIMEOUT = 10
OUTCOME_TIMEOUT = 30


def _test_database_url() -> str:
    """DATABASE_URL of the database pytest-django created for this run."""
    db = settings.DATABASES["default"]
    user = quote(db.get("USER") or "", safe="")
    password = db.get("PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{quote(db['NAME'], safe='')}"


class WorkerProcess:
    """A `celery -A config worker` subprocess consuming one queue; its output is kept."""

    def __init__(self, *, queue: str, extra_env: dict[str, str]):
        self.queue = queue
        self.hostname = f"{queue}@%h"
        env = {
            **os.environ,
            "DATABASE_URL": _test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "PYTHONUNBUFFERED": "1",
            # The fake CRM is a local http server.
            "CRM_ALLOW_HTTP": "true",
            "CRM_ALLOW_PRIVATE_NETWORKS": "true",
            **extra_env,
        }
        self._lines: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--hostname",
                self.hostname,
                "-Q",
                queue,
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="worker-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.append(line)
            if " ready." in line:
                self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_until_ready(self, timeout: float = WORKER_READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.process.poll() is not None:
                raise AssertionError(f"The worker exited early (code {self.process.returncode}).")
            if time.monotonic() > deadline:
                raise AssertionError(f"The worker was not ready within {timeout:g}s.")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)


@contextlib.contextmanager
def celery_worker(**extra_env: str):
    """Run a worker on a queue of its own, and send this process's tasks to that queue.

    Tasks are published to Redis, not run in-process (tests/conftest.py makes them eager
    for every test; this undoes it for the duration). The worker's output is printed when
    the block fails.
    """
    queue = f"e2e-{uuid.uuid4().hex[:12]}"
    previous = (celery_app.conf.task_always_eager, celery_app.conf.task_default_queue)
    worker = WorkerProcess(queue=queue, extra_env=extra_env)
    try:
        worker.wait_until_ready()
        celery_app.conf.task_always_eager = False
        celery_app.conf.task_default_queue = queue
        yield worker
    except BaseException:
        worker.stop()
        print(f"\n----- celery worker output ({queue}) -----\n{worker.output}-----", flush=True)
        raise
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_default_queue = previous
        worker.stop()


def _wait_for_confirmation(session_id, *, timeout: float = OUTCOME_TIMEOUT) -> InboxSession:
    """Poll the database until the session's confirmation is no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        session = InboxSession.all_tenants.get(pk=session_id)
        if session.confirmation_status != ConfirmationStatus.PENDING:
            return session
        if time.monotonic() > deadline:
            raise AssertionError(
                f"The confirmation was still pending after {timeout:g}s "
                f"(attempts={session.confirmation_attempts}, "
                f"last error={session.confirmation_last_error!r})."
            )
        time.sleep(0.1)


def _handover(api_key: str, contact_id: str) -> dict:
    client = APIClient()
    response = client.post(URL, {"contactId": contact_id}, format="json", HTTP_X_API_KEY=api_key)
    assert response.status_code == 201, response.content
    return response.json()


def _assert_is_the_confirmation(request, *, to: str) -> None:
    assert request.method == "POST"
    assert request.path == MESSAGES_PATH
    assert request.headers["Authorization"] == f"Bearer {CRM_API_KEY}"
    body = request.get_json()
    assert body["to"] == to
    assert body["type"] == "text"
    assert body["text"]["body"] == CONFIRMATION_TEXT


@pytest.mark.django_db(transaction=True)
def test_worker_sends_the_confirmation_after_the_handover(tenant, api_key, httpserver):
    agent = MembershipFactory(tenant=tenant)
    CrmIntegrationFactory(
        tenant=tenant, api_url=httpserver.url_for("/"), config={"phoneNumberId": PHONE_NUMBER_ID}
    )
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"messages": [{"id": "wamid.1"}]}
    )

    with celery_worker(CRM_RETRY_BACKOFF_SECONDS="0.2") as worker:
        body = _handover(api_key[1], "+4915100000001")
        assert body["status"] == "assigned"
        assert body["assignedAgent"]["id"] == str(agent.pk)
        assert body["confirmationMessage"] == "queued"

        session = _wait_for_confirmation(body["sessionId"])

    assert session.confirmation_status == ConfirmationStatus.SENT, session.confirmation_last_error
    assert session.confirmation_attempts == 1
    assert "send_handover_confirmation" in worker.output, "the worker process ran the task"
    assert len(httpserver.log) == 1
    request, response = httpserver.log[0]
    assert response.status_code == 200
    _assert_is_the_confirmation(request, to="+4915100000001")
    httpserver.check_assertions()


@pytest.mark.django_db(transaction=True)
def test_worker_retries_a_crm_error_and_leaves_the_assignment_alone(tenant, api_key, httpserver):
    agent = MembershipFactory(tenant=tenant)
    CrmIntegrationFactory(
        tenant=tenant, api_url=httpserver.url_for("/"), config={"phoneNumberId": PHONE_NUMBER_ID}
    )
    # One-shot handlers answer before permanent ones: the first request gets the 500.
    httpserver.expect_oneshot_request(MESSAGES_PATH, method="POST").respond_with_response(
        Response("CRM is having a moment", status=500)
    )
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"messages": [{"id": "wamid.2"}]}
    )

    with celery_worker(CRM_RETRY_BACKOFF_SECONDS="0.2") as worker:
        body = _handover(api_key[1], "+4915100000002")
        assert body["status"] == "assigned"
        assert body["confirmationMessage"] == "queued"
        assigned = InboxSession.all_tenants.get(pk=body["sessionId"])

        session = _wait_for_confirmation(body["sessionId"])

    assert session.confirmation_status == ConfirmationStatus.SENT, session.confirmation_last_error
    assert session.confirmation_attempts == 2
    assert "send_handover_confirmation" in worker.output, "the worker process ran the task"
    assert "Retry in" in worker.output, "the worker retried the task"
    assert session.confirmation_last_error == ""
    assert session.assigned_agent_id == agent.pk
    assert str(session.assigned_agent_id) == body["assignedAgent"]["id"]
    assert session.assigned_at == assigned.assigned_at
    assert session.unassigned_reason == ""
    assert [response.status_code for _, response in httpserver.log] == [500, 200]
    for request, _ in httpserver.log:
        _assert_is_the_confirmation(request, to="+4915100000002")
    httpserver.check_assertions()
