"""The handover's WhatsApp confirmation message, sent in the background through the CRM.

The CRM is a real local HTTP server (pytest-httpserver); Celery runs the tasks in
process (see tests/conftest.py), retries included.
"""

import json
import re
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
import time_machine
from celery.signals import task_failure
from cryptography.fernet import Fernet
from django.utils import timezone
from pytest_httpserver import HTTPServer
from werkzeug import Response

from audit.models import ActivityLog
from config.celery import app as celery_app
from inbox.confirmations import (
    Delivery,
    deliver_confirmation,
    enqueue_confirmation,
    requeue_stale_confirmations,
    retry_countdown_seconds,
)
from inbox.models import ConfirmationStatus, InboxSession
from tests.inbox.factories import (
    CONFIRMATION_TEXT,
    CRM_API_KEY,
    CrmIntegrationFactory,
    InboxSessionFactory,
)

MESSAGES_PATH = "/api/meta/PN1/messages"
FAILURE_LINE = re.compile(
    r"^Handover confirmation message failed \(assignment already done\): \S.*$"
)
ASSIGNMENT_FIELDS = ("assigned_agent_id", "assigned_at", "strategy", "unassigned_reason", "status")


@pytest.fixture(scope="module")
def make_httpserver():
    """pytest-httpserver's server, threaded: the timeout test's slow answers block no one."""
    server = HTTPServer(host="localhost", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture(autouse=True)
def task_failures():
    """Retries run, and a task that fails anyway fails the test.

    Celery 5.7 in eager mode: with `task_eager_propagates` on (tests/conftest.py),
    `self.retry()` raises `celery.exceptions.Retry` out of `apply_async()` and the retry
    never runs; with it off (the embedded production mode's default), `Task.apply`
    re-applies the task at once, in process, ignoring the countdown. These tests need the
    retries, so propagation is off here; an error a task raises is collected through the
    `task_failure` signal instead, and the test fails on it.
    """
    failures = []

    def collect(sender=None, exception=None, **kwargs):
        failures.append(f"{sender.name}: {exception!r}")

    task_failure.connect(collect, weak=False)
    previous = celery_app.conf.task_eager_propagates
    celery_app.conf.task_eager_propagates = False
    yield failures
    celery_app.conf.task_eager_propagates = previous
    task_failure.disconnect(collect)
    assert failures == [], "a task failed"


@pytest.fixture(autouse=True)
def _crm_settings(settings):
    settings.CRM_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    settings.CRM_HTTP_TIMEOUT_SECONDS = 2
    settings.CRM_MAX_RETRIES = 5
    settings.CRM_RETRY_BACKOFF_SECONDS = 0
    settings.CRM_ATTEMPT_LEASE_SECONDS = 60


@pytest.fixture
def crm(tenant, httpserver):
    return CrmIntegrationFactory(tenant=tenant, api_url=httpserver.url_for("/"))


@pytest.fixture
def session(tenant, teammate):
    """A session the handover assigned to `teammate`, its confirmation just queued."""
    return InboxSessionFactory(
        tenant=tenant, assigned_agent=teammate, assigned_at=timezone.now(), strategy="round_robin"
    )


def _fresh(session) -> InboxSession:
    return InboxSession.all_tenants.get(pk=session.pk)


def _assignment(session) -> dict:
    row = _fresh(session)
    return {field: getattr(row, field) for field in ASSIGNMENT_FIELDS}


def _expected_body(session) -> dict:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": session.contact_id,
        "type": "text",
        "text": {"preview_url": False, "body": CONFIRMATION_TEXT},
    }


def _activity(session, action):
    return ActivityLog.all_tenants.filter(target_id=str(session.pk), action=action)


def _failure_lines(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "inbox.confirmations" and record.levelname == "WARNING"
    ]


def _wait_for_requests(httpserver, count, within=5.0):
    deadline = time.monotonic() + within
    while len(httpserver.log) < count and time.monotonic() < deadline:
        time.sleep(0.02)


# --- sending ---------------------------------------------------------------------------


def test_the_message_is_sent_in_the_documented_wire_format(httpserver, crm, session, tenant):
    httpserver.expect_oneshot_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"messages": [{"id": "wamid.HBgM"}]}
    )

    assert enqueue_confirmation(session.pk) is True

    assert len(httpserver.log) == 1
    request, _ = httpserver.log[0]
    assert request.method == "POST"
    assert request.path == MESSAGES_PATH
    assert request.headers["Authorization"] == f"Bearer {CRM_API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert json.loads(request.get_data()) == _expected_body(session)

    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.SENT
    assert row.confirmation_attempts == 1
    assert row.confirmation_last_error == ""
    assert row.confirmation_finished_at is not None
    activity = _activity(session, "session.confirmation_sent").get()
    assert activity.tenant == tenant
    assert activity.actor_label == "system"
    assert activity.data["message_id"] == "wamid.HBgM"
    assert activity.data["integration_id"] == str(crm.pk)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_transient_error_is_retried_until_the_message_is_sent(httpserver, crm, session, status):
    httpserver.expect_ordered_request(MESSAGES_PATH, method="POST").respond_with_data(
        "busy", status=status
    )
    httpserver.expect_ordered_request(MESSAGES_PATH, method="POST").respond_with_json({})

    enqueue_confirmation(session.pk)

    assert len(httpserver.log) == 2
    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.SENT
    assert row.confirmation_attempts == 2
    assert row.confirmation_last_error == ""  # cleared once sent
    assert not _activity(session, "session.confirmation_failed").exists()


def test_a_crm_that_never_answers_in_time_fails_after_the_last_retry(
    httpserver, crm, session, settings, caplog
):
    settings.CRM_HTTP_TIMEOUT_SECONDS = 0.5
    settings.CRM_MAX_RETRIES = 2
    release = threading.Event()

    def too_slow(request):
        release.wait(5)
        return Response("{}", status=200, content_type="application/json")

    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_handler(too_slow)
    assignment_before = _assignment(session)

    started = time.monotonic()
    enqueue_confirmation(session.pk)
    elapsed = time.monotonic() - started
    release.set()
    _wait_for_requests(httpserver, 3)

    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.FAILED
    assert row.confirmation_attempts == 3  # CRM_MAX_RETRIES + 1
    assert "timeout" in row.confirmation_last_error
    assert "Gave up after 3 attempts" in row.confirmation_last_error
    assert len(httpserver.log) == 3
    assert elapsed < 3 * 0.5 + 2
    assert _assignment(session) == assignment_before
    assert _activity(session, "session.confirmation_failed").count() == 1
    lines = _failure_lines(caplog)
    assert len(lines) == 4  # each of the 3 attempts, then giving up
    assert all(FAILURE_LINE.match(line) for line in lines)


def test_a_refused_message_fails_at_once_without_retrying(httpserver, crm, session):
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"error": {"message": "Recipient phone number not in allowed list"}}, status=400
    )

    enqueue_confirmation(session.pk)

    assert len(httpserver.log) == 1
    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.FAILED
    assert row.confirmation_attempts == 1
    assert "HTTP 400" in row.confirmation_last_error
    assert "Recipient phone number not in allowed list" in row.confirmation_last_error
    activity = _activity(session, "session.confirmation_failed").get()
    assert activity.data["error"] == row.confirmation_last_error


def test_an_unreachable_crm_is_retried_and_then_fails(tenant, session, settings):
    settings.CRM_MAX_RETRIES = 1
    CrmIntegrationFactory(tenant=tenant, api_url="http://127.0.0.1:1/")

    enqueue_confirmation(session.pk)

    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.FAILED
    assert row.confirmation_attempts == 2
    assert "Could not connect to the CRM" in row.confirmation_last_error


# --- the integration must be complete ------------------------------------------------------


@pytest.mark.parametrize(
    ("integration", "names"),
    [
        (None, "No CRM integration is set up for this tenant"),
        ({"is_active": False}, "isActive is false"),
        ({"api_key": ""}, "missing apiKey"),
        ({"config": {}}, "missing config.phoneNumberId"),
        ({"api_url": ""}, "missing apiUrl"),
        ({"is_active": False, "api_key": ""}, "isActive is false; missing apiKey"),
    ],
    ids=["missing", "inactive", "no-key", "no-phone-number-id", "no-api-url", "several"],
)
def test_an_incomplete_integration_fails_without_any_request(
    httpserver, tenant, session, integration, names
):
    if integration is not None:
        CrmIntegrationFactory(
            **{"tenant": tenant, "api_url": httpserver.url_for("/"), **integration}
        )

    enqueue_confirmation(session.pk)

    assert httpserver.log == []
    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.FAILED
    assert names in row.confirmation_last_error
    assert _activity(session, "session.confirmation_failed").count() == 1


def test_another_tenants_integration_is_never_used(httpserver, session, other_tenant):
    CrmIntegrationFactory(tenant=other_tenant, api_url=httpserver.url_for("/"))

    enqueue_confirmation(session.pk)

    assert httpserver.log == []
    assert "No CRM integration" in _fresh(session).confirmation_last_error


def test_a_key_encrypted_with_a_removed_key_fails_clearly(httpserver, crm, session, settings):
    settings.CRM_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    enqueue_confirmation(session.pk)

    assert httpserver.log == []
    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.FAILED
    assert "cannot be decrypted" in row.confirmation_last_error


# --- what operators see ------------------------------------------------------------------


def test_a_failure_logs_the_documented_warning_line(httpserver, crm, session, caplog):
    httpserver.expect_request(MESSAGES_PATH).respond_with_data("bad token", status=401)

    enqueue_confirmation(session.pk)

    row = _fresh(session)
    assert _failure_lines(caplog) == [
        "Handover confirmation message failed (assignment already done): "
        f"{row.confirmation_last_error} [session {row.pk}, tenantId={row.tenant_id}]"
    ]
    record = next(r for r in caplog.records if r.name == "inbox.confirmations")
    assert record.levelname == "WARNING"


@pytest.mark.parametrize("status", [400, 500])
def test_the_api_key_never_reaches_logs_or_stored_errors(
    httpserver, crm, session, settings, caplog, status
):
    settings.CRM_MAX_RETRIES = 1

    def echo_authorization(request):
        # A careless CRM that quotes the request's credentials in its error.
        body = json.dumps({"error": f"rejected {request.headers['Authorization']}"})
        return Response(body, status=status, content_type="application/json")

    httpserver.expect_request(MESSAGES_PATH).respond_with_handler(echo_authorization)

    enqueue_confirmation(session.pk)

    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.FAILED
    assert "[redacted]" in row.confirmation_last_error
    stored = row.confirmation_last_error + json.dumps(
        list(_activity(session, "session.confirmation_failed").values_list("data", flat=True))
    )
    assert CRM_API_KEY not in stored
    assert caplog.records
    assert CRM_API_KEY not in caplog.text


def test_a_failed_confirmation_leaves_the_assignment_alone(httpserver, crm, session, teammate):
    httpserver.expect_request(MESSAGES_PATH).respond_with_data("no", status=403)
    before = _assignment(session)

    enqueue_confirmation(session.pk)

    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.FAILED
    assert _assignment(session) == before
    assert row.assigned_agent == teammate


# --- once, and not lost ------------------------------------------------------------------


def test_a_confirmation_already_sent_is_not_sent_again(httpserver, crm, session):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    enqueue_confirmation(session.pk)
    assert _fresh(session).confirmation_status == ConfirmationStatus.SENT

    assert deliver_confirmation(session_id=session.pk, attempt_number=1) == Delivery.NOT_PENDING
    assert enqueue_confirmation(session.pk) is True

    assert len(httpserver.log) == 1
    assert _fresh(session).confirmation_attempts == 1
    assert _activity(session, "session.confirmation_sent").count() == 1


def test_a_duplicate_enqueue_waits_for_the_attempt_in_flight(httpserver, crm, session):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    InboxSession.all_tenants.filter(pk=session.pk).update(
        confirmation_attempts=1, confirmation_started_at=timezone.now()
    )

    assert deliver_confirmation(session_id=session.pk, attempt_number=1) == Delivery.IN_PROGRESS
    assert httpserver.log == []

    # The attempt in flight died without a word; once its lease is over, another may go.
    with time_machine.travel(timezone.now() + timedelta(seconds=61)):
        assert deliver_confirmation(session_id=session.pk, attempt_number=1) == Delivery.SENT
    assert len(httpserver.log) == 1
    assert _fresh(session).confirmation_attempts == 2


@contextmanager
def _broker_down():
    """Tasks go to a broker that refuses connections, as when Redis is down."""
    conf = celery_app.conf
    previous = (conf.task_always_eager, conf.broker_url)
    # The app caches its connection pools; drop them so the unreachable URL is used,
    # and put the previous ones back afterwards.
    pools = (celery_app._pool, celery_app.amqp._producer_pool)
    conf.task_always_eager = False
    conf.broker_url = "redis://127.0.0.1:1/0"
    celery_app._pool = celery_app.amqp._producer_pool = None
    try:
        yield
    finally:
        if celery_app._pool is not None:
            celery_app._pool.force_close_all()
        celery_app._pool, celery_app.amqp._producer_pool = pools
        conf.task_always_eager, conf.broker_url = previous


def test_a_confirmation_that_could_not_be_enqueued_is_sent_by_the_periodic_requeue(
    httpserver, crm, tenant, teammate, caplog
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    # The handover happened ten minutes ago, while the broker was down.
    with time_machine.travel(timezone.now() - timedelta(minutes=10)):
        session = InboxSessionFactory(tenant=tenant, assigned_agent=teammate)
        with _broker_down():
            started = time.monotonic()
            assert enqueue_confirmation(session.pk) is False
            assert time.monotonic() - started < 5  # the broker settings fail fast

    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.PENDING
    assert row.confirmation_attempts == 0
    assert httpserver.log == []
    assert "could not be enqueued" in caplog.text

    assert requeue_stale_confirmations(older_than_seconds=120) == 1

    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.SENT
    assert row.confirmation_attempts == 1
    assert row.confirmation_queued_at > timezone.now() - timedelta(minutes=1)
    assert len(httpserver.log) == 1


def test_with_eager_propagation_a_retry_surfaces_and_the_row_waits_for_the_requeue(
    httpserver, crm, session
):
    # Celery 5.7 raises Retry out of an eager apply_async() when propagation is on;
    # enqueue_confirmation still never raises into the handover's on_commit.
    celery_app.conf.task_eager_propagates = True  # the task_failures fixture restores it
    httpserver.expect_request(MESSAGES_PATH).respond_with_data("busy", status=503)

    assert enqueue_confirmation(session.pk) is False

    assert len(httpserver.log) == 1
    row = _fresh(session)
    assert row.confirmation_status == ConfirmationStatus.PENDING
    assert row.confirmation_attempts == 1
    assert "HTTP 503" in row.confirmation_last_error


def test_the_requeue_takes_only_stale_pending_confirmations_of_every_tenant(
    httpserver, crm, tenant, other_tenant
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    CrmIntegrationFactory(tenant=other_tenant, api_url=httpserver.url_for("/"))
    now = timezone.now()
    long_ago = now - timedelta(minutes=30)
    stale = InboxSessionFactory(tenant=tenant, confirmation_queued_at=long_ago)
    stale_elsewhere = InboxSessionFactory(tenant=other_tenant, confirmation_queued_at=None)
    fresh = InboxSessionFactory(tenant=tenant, confirmation_queued_at=now)
    attempted_recently = InboxSessionFactory(
        tenant=tenant,
        confirmation_queued_at=long_ago,
        confirmation_attempts=1,
        confirmation_started_at=now - timedelta(seconds=30),
        confirmation_finished_at=now - timedelta(seconds=29),
    )
    done = [
        InboxSessionFactory(tenant=tenant, confirmation_queued_at=long_ago, confirmation_status=s)
        for s in (ConfirmationStatus.SENT, ConfirmationStatus.FAILED, ConfirmationStatus.SKIPPED)
    ]

    assert requeue_stale_confirmations(older_than_seconds=120) == 2

    assert _fresh(stale).confirmation_status == ConfirmationStatus.SENT
    assert _fresh(stale_elsewhere).confirmation_status == ConfirmationStatus.SENT
    assert _fresh(fresh).confirmation_status == ConfirmationStatus.PENDING
    assert _fresh(attempted_recently).confirmation_status == ConfirmationStatus.PENDING
    assert [_fresh(s).confirmation_attempts for s in done] == [0, 0, 0]
    assert len(httpserver.log) == 2
    assert requeue_stale_confirmations(older_than_seconds=120) == 0


def test_retry_backoff_grows_exponentially_and_is_capped(settings):
    settings.CRM_RETRY_BACKOFF_SECONDS = 5
    for retries, base in [(0, 5), (1, 10), (3, 40), (6, 300), (20, 300)]:
        countdown = retry_countdown_seconds(retries)
        assert base <= countdown <= base * 1.1


@pytest.mark.parametrize(
    ("api_url", "problem"),
    [
        ("http://crm.example.com", "must start with https://"),
        ("https://127.0.0.1:8443", "non-public address"),
        ("https://10.1.2.3", "non-public address"),
        ("https://169.254.169.254", "non-public address"),
        ("https://[::1]", "non-public address"),
        ("https://crm.example.com/x?", "query string"),
        ("https://user:pw@crm.example.com", "credentials"),
    ],
)
def test_crm_urls_that_could_reach_internal_services_are_refused(settings, api_url, problem):
    from inbox.whatsapp import PermanentSendError, crm_url_problems, send_whatsapp_text

    settings.CRM_ALLOW_HTTP = False
    settings.CRM_ALLOW_PRIVATE_NETWORKS = False

    assert any(problem in p for p in crm_url_problems(api_url))
    with pytest.raises(PermanentSendError, match="refused"):
        send_whatsapp_text(
            api_url=api_url, api_key="k", phone_number_id="1", to="+1", text="hi", timeout=1
        )


def test_a_public_https_crm_url_is_accepted(settings):
    from inbox.whatsapp import crm_url_problems

    settings.CRM_ALLOW_HTTP = False
    settings.CRM_ALLOW_PRIVATE_NETWORKS = False
    assert crm_url_problems("https://93.184.215.14") == []
