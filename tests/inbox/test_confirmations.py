"""The handover's WhatsApp confirmation ("Connecting you to an agent..."), end to end.

`POST /api/v1/handover` queues the message in the outbox, in the handover's own
transaction; `deliver_outbox` does what the outbox worker does (send every due message,
in this thread); the CRM is a real local HTTP server (pytest-httpserver). What the tests
look at is what people see: the request the CRM receives, the session's
`confirmationStatus` in the API, the message row the admin shows, the activity log and
the operators' log lines.
"""

import json
import logging
import socket
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from django.test import Client
from django.utils import timezone
from werkzeug import Response

from audit.models import ActivityLog
from core.actor import Actor
from inbox.channels import CONFIRMATION_SENDERS
from inbox.models import Channel as SessionChannel
from inbox.models import InboxSession
from inbox.services import assign_session_to
from inbox.whatsapp import crm_url_problems
from outbox.delivery import attempt, claim_due
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import send_again
from tests.factories import MembershipFactory
from tests.inbox.factories import CRM_API_KEY, CrmIntegrationFactory

pytestmark = pytest.mark.django_db

HANDOVER_URL = "/api/v1/handover"
MESSAGES_PATH = "/api/meta/PN1/messages"
DEFAULT_TEXT = "Connecting you to an agent..."
CONTACT = "+4915112345678"
FAILURE_PREFIX = "Handover confirmation message failed (assignment already done): "
ASSIGNMENT_FIELDS = ("status", "assigned_agent_id", "assigned_at", "strategy", "unassigned_reason")


@pytest.fixture(autouse=True)
def _outbox_settings(settings, caplog):
    settings.CRM_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    settings.OUTBOX_MAX_ATTEMPTS = 3
    settings.OUTBOX_RETRY_BASE_SECONDS = 5
    settings.OUTBOX_RETRY_MAX_DELAY_SECONDS = 300
    settings.OUTBOX_SEND_DEADLINE_SECONDS = 5
    caplog.set_level(logging.INFO, logger="outbox")


@pytest.fixture
def crm(tenant, httpserver):
    """The tenant's active, complete CRM integration: the local HTTP server."""
    return CrmIntegrationFactory(tenant=tenant, api_url=httpserver.url_for("/"))


@pytest.fixture
def refusing_url():
    """A local port nobody listens on: connecting to it is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound (so no one else takes it) but not listening
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


# --- helpers -----------------------------------------------------------------------------


def handover(client, contact=CONTACT, **fields) -> dict:
    response = client.post(HANDOVER_URL, {"contactId": contact, **fields}, format="json")
    assert response.status_code in (200, 201), response.content
    return response.json()


def session_view(client, session_id) -> dict:
    """The session as the API shows it."""
    response = client.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.content
    return response.json()


def confirmation_of(session_id) -> OutboundMessage:
    session = InboxSession.all_tenants.select_related("confirmation_message").get(pk=session_id)
    assert session.confirmation_message is not None, "no confirmation was queued"
    return session.confirmation_message


def reload(message) -> OutboundMessage:
    return OutboundMessage.all_tenants.get(pk=message.pk)


def make_due(message) -> None:
    """The worker would wait for the retry; the test does not."""
    OutboundMessage.all_tenants.filter(pk=message.pk).update(next_attempt_at=timezone.now())


def assignment(session_id) -> dict:
    row = InboxSession.all_tenants.get(pk=session_id)
    return {field: getattr(row, field) for field in ASSIGNMENT_FIELDS}


def activities(tenant, action, message):
    return ActivityLog.objects.for_tenant(tenant).filter(action=action, target_id=str(message.pk))


def outbox_records(caplog, level):
    return [r for r in caplog.records if r.name == "outbox" and r.levelno == level]


def failure_lines(caplog) -> list[str]:
    """What operators see at WARNING (and above) from the outbox."""
    records = caplog.records
    return [r.getMessage() for r in records if r.name == "outbox" and r.levelno >= logging.WARNING]


def retry_lines(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in outbox_records(caplog, logging.INFO)
        if "next try at" in r.getMessage()
    ]


def expected_failure_line(message, session_id) -> str:
    return (
        f"{FAILURE_PREFIX}{message.last_error} "
        f"[session {session_id}, message {message.pk}, tenantId={message.tenant_id}]"
    )


def idempotency_keys(httpserver) -> list[str]:
    return [request.headers.get("Idempotency-Key") for request, _ in httpserver.log]


def deliver_until_final(deliver_outbox, message, *, rounds) -> None:
    """Run the worker `rounds` times, making the retry due in between."""
    for _ in range(rounds):
        make_due(message)
        deliver_outbox()


# --- sending -----------------------------------------------------------------------------


def test_the_confirmation_goes_out_in_the_documented_wire_format(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox, caplog
):
    httpserver.expect_oneshot_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"messages": [{"id": "wamid.HBgM"}]}
    )

    body = handover(tenant_client)

    assert body["confirmationMessage"] == "queued"
    assert body["assignedAgent"]["id"] == str(teammate.pk)
    assert httpserver.log == [], "nothing is sent while the request runs"
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "pending"

    assert deliver_outbox() == 1

    assert len(httpserver.log) == 1
    request, response = httpserver.log[0]
    message = reload(confirmation_of(body["sessionId"]))
    assert request.method == "POST"
    assert request.path == MESSAGES_PATH
    assert request.headers["Authorization"] == f"Bearer {CRM_API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert message.idempotency_key
    assert request.headers["Idempotency-Key"] == message.idempotency_key
    assert json.loads(request.get_data()) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CONTACT,
        "type": "text",
        "text": {"preview_url": False, "body": DEFAULT_TEXT},
    }
    assert response.status_code == 200

    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "sent"
    assert message.status == MessageStatus.SENT
    assert (message.channel, message.kind, message.target) == (
        "whatsapp",
        "handover.confirmation",
        CONTACT,
    )
    assert message.provider_message_id == "wamid.HBgM"
    assert message.attempts == 1
    assert message.last_error == ""
    assert message.finished_at is not None
    # A sent message shows on its row; the audit log keeps what needs attention.
    assert not activities(tenant, "message.sent", message).exists()
    assert not activities(tenant, "message.failed", message).exists()
    assert failure_lines(caplog) == []

    # Sent is final: the worker never sends it again.
    assert deliver_outbox() == 0
    assert len(httpserver.log) == 1


def test_the_handover_message_of_the_request_is_the_text_sent(
    teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_json({})

    body = handover(tenant_client, handoverMessage="One moment, a sales expert is joining.")
    deliver_outbox()

    (request, _), *_ = httpserver.log
    assert json.loads(request.get_data())["text"]["body"] == (
        "One moment, a sales expert is joining."
    )
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "sent"


@pytest.mark.parametrize(
    "answer",
    [Response("{}", status=200, content_type="application/json"), Response(status=204)],
    ids=["empty-json", "no-content"],
)
def test_a_success_without_a_message_id_is_sent_with_none_stored(
    teammate, tenant_client, crm, httpserver, deliver_outbox, answer
):
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_response(answer)

    body = handover(tenant_client)
    deliver_outbox()

    message = confirmation_of(body["sessionId"])
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == ""
    assert len(httpserver.log) == 1


def test_without_send_handover_message_nothing_is_queued_or_sent(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})

    body = handover(tenant_client, sendHandoverMessage=False)

    assert body["confirmationMessage"] == "skipped"
    assert body["assignedAgent"]["id"] == str(teammate.pk)
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "skipped"
    assert not OutboundMessage.objects.for_tenant(tenant).exists()
    assert deliver_outbox() == 0
    assert httpserver.log == []


# --- transient errors: retried with the same Idempotency-Key -----------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_transient_error_is_retried_later_until_the_message_is_sent(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox, caplog, status
):
    httpserver.expect_ordered_request(MESSAGES_PATH, method="POST").respond_with_data(
        "busy, try later", status=status
    )
    httpserver.expect_ordered_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"messages": [{"id": "wamid.second"}]}
    )
    body = handover(tenant_client)

    assert deliver_outbox() == 1

    message = confirmation_of(body["sessionId"])
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "pending"
    assert message.status == MessageStatus.PENDING
    assert message.attempts == 1
    assert f"HTTP {status}" in message.last_error
    assert "busy, try later" in message.last_error
    # The first retry waits OUTBOX_RETRY_BASE_SECONDS, plus up to 10% jitter.
    wait = (message.next_attempt_at - message.last_attempt_at).total_seconds()
    assert 5 <= wait <= 5.5 + 2  # + the time the send itself took
    assert deliver_outbox() == 0, "not due yet"
    assert len(httpserver.log) == 1
    [retry_line] = retry_lines(caplog)
    assert "attempt 1 of 3" in retry_line
    assert f"[session {body['sessionId']}, message {message.pk}" in retry_line
    assert failure_lines(caplog) == []

    make_due(message)
    assert deliver_outbox() == 1

    message = reload(message)
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "sent"
    assert message.attempts == 2
    assert message.last_error == "", "cleared once sent"
    assert message.provider_message_id == "wamid.second"
    keys = idempotency_keys(httpserver)
    assert keys == [message.idempotency_key] * 2
    assert not activities(tenant, "message.failed", message).exists()
    assert failure_lines(caplog) == []


@pytest.mark.parametrize("crm_answer", [503, 429, "refused"])
def test_a_crm_that_keeps_failing_is_given_up_after_the_budget(
    tenant,
    teammate,
    tenant_client,
    httpserver,
    refusing_url,
    deliver_outbox,
    caplog,
    crm_answer,
):
    if crm_answer == "refused":
        CrmIntegrationFactory(tenant=tenant, api_url=refusing_url)
    else:
        CrmIntegrationFactory(tenant=tenant, api_url=httpserver.url_for("/"))
        httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_data(
            "overloaded", status=crm_answer
        )
    body = handover(tenant_client)
    session_id = body["sessionId"]
    before = assignment(session_id)

    deliver_outbox()
    first = confirmation_of(session_id)
    assert first.status == MessageStatus.PENDING
    deliver_until_final(deliver_outbox, first, rounds=2)

    message = reload(first)
    assert session_view(tenant_client, session_id)["confirmationStatus"] == "failed"
    assert message.status == MessageStatus.FAILED
    assert message.attempts == 3  # OUTBOX_MAX_ATTEMPTS
    assert message.last_error.endswith("Gave up after 3 attempts.")
    if crm_answer == "refused":
        assert "Could not connect to the CRM" in message.last_error
    else:
        assert f"HTTP {crm_answer}" in message.last_error
        assert idempotency_keys(httpserver) == [message.idempotency_key] * 3
    assert failure_lines(caplog) == [expected_failure_line(message, session_id)]
    assert len(retry_lines(caplog)) == 2
    failed = activities(tenant, "message.failed", message).get()
    assert failed.data["error"] == message.last_error
    assert failed.data["attempts"] == 3
    assert assignment(session_id) == before
    assert before["assigned_agent_id"] == teammate.pk

    make_due(message)
    assert deliver_outbox() == 0, "a failed message is not tried again by itself"


# --- refusals: failed at once --------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_refused_message_fails_at_once_without_retrying(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox, caplog, status
):
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"error": {"message": "Recipient phone number not in allowed list"}}, status=status
    )
    body = handover(tenant_client)

    deliver_outbox()

    message = confirmation_of(body["sessionId"])
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "failed"
    assert message.attempts == 1
    assert f"HTTP {status}" in message.last_error
    assert "Recipient phone number not in allowed list" in message.last_error
    assert "Gave up" not in message.last_error
    assert len(httpserver.log) == 1
    assert retry_lines(caplog) == []
    assert failure_lines(caplog) == [expected_failure_line(message, body["sessionId"])]
    failed = activities(tenant, "message.failed", message).get()
    assert failed.data["error"] == message.last_error
    make_due(message)
    assert deliver_outbox() == 0
    assert len(httpserver.log) == 1


def test_a_redirect_is_not_followed(teammate, tenant_client, crm, httpserver, deliver_outbox):
    elsewhere = httpserver.url_for("/moved/api/meta/PN1/messages")
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_response(
        Response(status=302, headers={"Location": elsewhere})
    )
    httpserver.expect_request("/moved/api/meta/PN1/messages").respond_with_json({})
    body = handover(tenant_client)

    deliver_outbox()

    message = confirmation_of(body["sessionId"])
    assert message.status == MessageStatus.FAILED
    assert message.attempts == 1
    assert f"HTTP 302 (redirect to {elsewhere})" in message.last_error
    assert "set apiUrl to the final address" in message.last_error
    assert [request.path for request, _ in httpserver.log] == [MESSAGES_PATH]


def test_a_failed_confirmation_leaves_the_assignment_alone(
    teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_data("no", status=403)
    body = handover(tenant_client)
    before = assignment(body["sessionId"])

    deliver_outbox()

    view = session_view(tenant_client, body["sessionId"])
    assert view["confirmationStatus"] == "failed"
    assert view["status"] == "open"
    assert view["assignedAgentId"] == str(teammate.pk)
    assert view["unassignedReason"] == ""
    assert assignment(body["sessionId"]) == before


# --- the integration must be complete --------------------------------------------------


@pytest.mark.parametrize(
    ("integration", "names"),
    [
        (None, "No CRM integration is set up for this tenant"),
        ({"is_active": False}, "cannot send: isActive is false."),
        ({"api_key": ""}, "cannot send: missing apiKey."),
        ({"config": {}}, "cannot send: missing config.phoneNumberId."),
        ({"api_url": ""}, "cannot send: missing apiUrl."),
        ({"is_active": False, "api_key": ""}, "cannot send: isActive is false; missing apiKey."),
    ],
    ids=["none", "inactive", "no-key", "no-phone-number-id", "no-api-url", "several"],
)
def test_an_incomplete_integration_fails_without_any_request(
    tenant, teammate, tenant_client, httpserver, deliver_outbox, caplog, integration, names
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    if integration is not None:
        CrmIntegrationFactory(
            **{"tenant": tenant, "api_url": httpserver.url_for("/"), **integration}
        )
    body = handover(tenant_client)

    deliver_outbox()

    message = confirmation_of(body["sessionId"])
    assert httpserver.log == []
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "failed"
    assert names in message.last_error
    assert message.attempts == 1
    assert failure_lines(caplog) == [expected_failure_line(message, body["sessionId"])]
    assert activities(tenant, "message.failed", message).count() == 1


def test_another_tenants_integration_is_never_used(
    teammate, other_tenant, tenant_client, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    CrmIntegrationFactory(tenant=other_tenant, api_url=httpserver.url_for("/"))
    body = handover(tenant_client)

    deliver_outbox()

    assert httpserver.log == []
    message = confirmation_of(body["sessionId"])
    assert message.status == MessageStatus.FAILED
    assert "No CRM integration is set up for this tenant" in message.last_error


def test_a_key_encrypted_with_a_removed_encryption_key_fails_clearly(
    teammate, tenant_client, crm, httpserver, deliver_outbox, settings, caplog
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    settings.CRM_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]  # the old one is gone
    body = handover(tenant_client)

    deliver_outbox()

    assert httpserver.log == []
    message = confirmation_of(body["sessionId"])
    assert message.status == MessageStatus.FAILED
    assert "cannot be decrypted" in message.last_error
    assert "set the API key again" in message.last_error
    assert len(failure_lines(caplog)) == 1


def test_after_the_integration_is_fixed_send_again_delivers(
    tenant, owner, teammate, tenant_client, httpserver, deliver_outbox
):
    """The integration is read at send time: an admin fixes it and sends the message again."""
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({"messages": [{"id": "wamid.X"}]})
    body = handover(tenant_client)
    deliver_outbox()
    message = confirmation_of(body["sessionId"])
    assert message.status == MessageStatus.FAILED

    CrmIntegrationFactory(tenant=tenant, api_url=httpserver.url_for("/"))
    assert send_again(tenant=tenant, message_ids=[message.pk], actor=Actor.for_membership(owner))
    deliver_outbox()

    message = reload(message)
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "sent"
    assert message.provider_message_id == "wamid.X"
    assert idempotency_keys(httpserver) == [message.idempotency_key]


# --- the CRM API key stays secret --------------------------------------------------------


def _echo_authorization(status):
    def handler(request):
        # A careless CRM that quotes the request's credentials back.
        quoted = request.headers["Authorization"]
        if status == 302:
            return Response(status=302, headers={"Location": f"https://crm.example/?t={quoted}"})
        body = json.dumps({"error": f"rejected {quoted}"})
        return Response(body, status=status, content_type="application/json")

    return handler


@pytest.mark.parametrize("status", [400, 500, 302])
def test_the_api_key_never_reaches_stored_errors_or_logs(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox, caplog, status
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_handler(_echo_authorization(status))
    body = handover(tenant_client)

    deliver_outbox()
    message = confirmation_of(body["sessionId"])
    deliver_until_final(deliver_outbox, message, rounds=2)  # 500 is retried; the rest are done

    message = reload(message)
    assert message.status == MessageStatus.FAILED
    assert all(r.headers["Authorization"] == f"Bearer {CRM_API_KEY}" for r, _ in httpserver.log)
    assert "[redacted]" in message.last_error
    assert CRM_API_KEY not in message.last_error
    stored = json.dumps(
        list(ActivityLog.objects.for_tenant(tenant).values_list("data", "target_label"))
    )
    assert CRM_API_KEY not in stored
    assert failure_lines(caplog)
    assert CRM_API_KEY not in caplog.text


# --- the SSRF guard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_url", "problem"),
    [
        ("{local}", "apiUrl must start with https://"),
        ("{local}", "non-public address (127.0.0.1)"),
        ("https://127.0.0.1:{port}/", "non-public address (127.0.0.1)"),
        ("https://10.1.2.3", "non-public address (10.1.2.3)"),
        ("https://169.254.169.254", "non-public address (169.254.169.254)"),
        ("https://[::1]:{port}", "non-public address (::1)"),
        ("https://crm.example.com/x?to=internal", "query string"),
        ("https://user:pw@crm.example.com", "must not contain credentials"),
    ],
    ids=[
        "http",
        "loopback-name",
        "loopback",
        "private",
        "metadata",
        "ipv6-loopback",
        "query",
        "credentials",
    ],
)
def test_a_crm_url_that_could_reach_internal_services_is_refused_without_a_request(
    tenant, teammate, tenant_client, httpserver, deliver_outbox, settings, api_url, problem
):
    settings.OUTBOUND_ALLOW_HTTP = False
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    local = httpserver.url_for("/").replace("localhost", "127.0.0.1")
    url = api_url.format(local=local, port=httpserver.port)
    CrmIntegrationFactory(tenant=tenant, api_url=url)
    body = handover(tenant_client)

    deliver_outbox()

    message = confirmation_of(body["sessionId"])
    assert message.status == MessageStatus.FAILED
    assert message.attempts == 1
    assert message.last_error.startswith("CRM integration refused: ")
    assert problem in message.last_error
    assert httpserver.log == []


def test_a_public_https_crm_url_passes_the_guard(settings):
    settings.OUTBOUND_ALLOW_HTTP = False
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False

    assert crm_url_problems("https://93.184.215.14") == []
    assert crm_url_problems("https://93.184.215.14:8443/crm") == []


# --- one confirmation per handover ------------------------------------------------------


def test_a_second_handover_while_the_first_confirmation_waits_sends_one_message(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})

    first = handover(tenant_client)
    second = handover(tenant_client)

    assert second["sessionCreated"] is False
    assert second["sessionId"] == first["sessionId"]
    assert OutboundMessage.objects.for_tenant(tenant).count() == 1
    assert deliver_outbox() == 1
    assert len(httpserver.log) == 1
    assert session_view(tenant_client, first["sessionId"])["confirmationStatus"] == "sent"


def test_a_second_handover_while_the_first_is_being_sent_sends_one_message(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    first = handover(tenant_client)
    [claimed] = claim_due(limit=10)  # a worker took it and is about to send
    assert session_view(tenant_client, first["sessionId"])["confirmationStatus"] == "sending"

    second = handover(tenant_client)
    attempt(claimed)

    assert second["sessionId"] == first["sessionId"]
    assert OutboundMessage.objects.for_tenant(tenant).count() == 1
    assert deliver_outbox() == 0
    assert len(httpserver.log) == 1
    assert session_view(tenant_client, first["sessionId"])["confirmationStatus"] == "sent"


def test_a_handover_after_the_confirmation_went_out_confirms_again_with_no_quiet_period(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    set_quiet_period(tenant, 0)
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    first = handover(tenant_client)
    deliver_outbox()
    first_message = confirmation_of(first["sessionId"])

    second = handover(tenant_client)
    deliver_outbox()

    assert second["sessionId"] == first["sessionId"]
    assert (second["confirmationMessage"], second["confirmationSkippedReason"]) == ("queued", None)
    second_message = confirmation_of(second["sessionId"])
    assert second_message.pk != first_message.pk
    assert reload(first_message).status == MessageStatus.SENT
    assert second_message.status == MessageStatus.SENT
    keys = idempotency_keys(httpserver)
    assert keys == [first_message.idempotency_key, second_message.idempotency_key]
    assert keys[0] != keys[1], "a new message is a new send for the CRM"


# --- the quiet period: a reused session is not confirmed again and again ---------------


def set_quiet_period(tenant, seconds) -> None:
    tenant.confirmation_quiet_period_seconds = seconds
    tenant.save(update_fields=["confirmation_quiet_period_seconds"])


def sent_ago(message, seconds) -> None:
    """The first handover and its message happened `seconds` ago (instead of the test
    waiting that long)."""
    then = timezone.now() - timedelta(seconds=seconds)
    session = InboxSession.all_tenants.filter(pk=message.payload["session_id"])
    session.update(assigned_at=then - timedelta(seconds=1))
    OutboundMessage.all_tenants.filter(pk=message.pk).update(created_at=then, finished_at=then)


def test_the_quiet_period_is_ten_minutes_by_default(tenant):
    assert tenant.confirmation_quiet_period_seconds == 600


def test_a_handover_soon_after_the_confirmation_went_out_sends_nothing_more(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({"messages": [{"id": "wamid.1"}]})
    first = handover(tenant_client)
    deliver_outbox()
    first_message = confirmation_of(first["sessionId"])

    second = handover(tenant_client)

    assert second["sessionId"] == first["sessionId"]
    assert second["sessionCreated"] is False
    assert second["confirmationMessage"] == "skipped"
    assert second["confirmationSkippedReason"] == "recently_sent"
    assert deliver_outbox() == 0
    assert len(httpserver.log) == 1, "one message within a second, not two"
    assert OutboundMessage.objects.for_tenant(tenant).count() == 1
    assert confirmation_of(first["sessionId"]).pk == first_message.pk
    assert session_view(tenant_client, first["sessionId"])["confirmationStatus"] == "sent"


def test_after_the_quiet_period_the_confirmation_is_sent_again(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    set_quiet_period(tenant, 300)
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    first = handover(tenant_client)
    deliver_outbox()
    first_message = confirmation_of(first["sessionId"])

    sent_ago(first_message, 299)
    assert handover(tenant_client)["confirmationSkippedReason"] == "recently_sent"
    sent_ago(first_message, 301)
    again = handover(tenant_client)
    deliver_outbox()

    assert (again["confirmationMessage"], again["confirmationSkippedReason"]) == ("queued", None)
    assert confirmation_of(first["sessionId"]).pk != first_message.pk
    assert len(httpserver.log) == 2
    assert session_view(tenant_client, first["sessionId"])["confirmationStatus"] == "sent"


def test_a_new_agent_is_confirmed_again_within_the_quiet_period(
    tenant, owner, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    first = handover(tenant_client)
    deliver_outbox()
    assert first["assignedAgent"]["id"] == str(teammate.pk)
    assign_session_to(
        tenant=tenant,
        session_id=first["sessionId"],
        agent=owner,
        actor=Actor.for_membership(owner),
    )

    second = handover(tenant_client)
    deliver_outbox()

    assert second["assignedAgent"]["id"] == str(owner.pk)
    assert (second["confirmationMessage"], second["confirmationSkippedReason"]) == ("queued", None)
    assert len(httpserver.log) == 2
    # ... and only once for that agent.
    third = handover(tenant_client)
    assert third["confirmationSkippedReason"] == "recently_sent"
    assert deliver_outbox() == 0
    assert len(httpserver.log) == 2


def test_a_session_that_finds_its_agent_on_a_later_handover_is_confirmed_again(
    tenant, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    first = handover(tenant_client)
    deliver_outbox()
    assert first["status"] == "unassigned"
    agent = MembershipFactory(tenant=tenant)

    second = handover(tenant_client)
    deliver_outbox()

    assert second["assignedAgent"]["id"] == str(agent.pk)
    assert second["confirmationMessage"] == "queued"
    assert len(httpserver.log) == 2


def test_a_failed_confirmation_is_sent_again_within_the_quiet_period(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_ordered_request(MESSAGES_PATH).respond_with_data("no", status=400)
    httpserver.expect_ordered_request(MESSAGES_PATH).respond_with_json({})
    first = handover(tenant_client)
    deliver_outbox()
    assert confirmation_of(first["sessionId"]).status == MessageStatus.FAILED

    second = handover(tenant_client)
    deliver_outbox()

    assert second["confirmationMessage"] == "queued", "the contact never got the first one"
    assert session_view(tenant_client, first["sessionId"])["confirmationStatus"] == "sent"
    assert len(httpserver.log) == 2


def test_a_reused_session_without_send_handover_message_says_not_requested(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})
    handover(tenant_client)
    deliver_outbox()

    body = handover(tenant_client, sendHandoverMessage=False)

    assert (body["confirmationMessage"], body["confirmationSkippedReason"]) == (
        "skipped",
        "not_requested",
    )
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "sent"


def test_the_quiet_period_is_editable_in_the_tenant_admin(tenant, owner):
    client = Client()
    client.force_login(owner.user)

    page = client.get(f"/admin/teams/tenant/{tenant.pk}/change/")

    assert page.status_code == 200
    assert b'name="confirmation_quiet_period_seconds"' in page.content


# --- channels without a sender -----------------------------------------------------------

NO_SENDER = [c for c in SessionChannel.values if c != SessionChannel.WHATSAPP]


@pytest.mark.parametrize("channel", NO_SENDER)
def test_a_channel_without_a_sender_sends_nothing_and_says_why(
    tenant, owner, teammate, tenant_client, crm, httpserver, deliver_outbox, channel
):
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})

    body = handover(tenant_client, channel=channel)
    again = handover(tenant_client, channel=channel)

    for answer in (body, again):
        assert answer["confirmationMessage"] == "skipped"
        assert answer["confirmationSkippedReason"] == "no_sender_for_channel"
    assert body["assignedAgent"]["id"] == str(teammate.pk), "assignment is unaffected"
    assert not OutboundMessage.objects.for_tenant(tenant).exists()
    assert deliver_outbox() == 0
    assert httpserver.log == [], "no WhatsApp text to a web chat visitor"
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "skipped"
    admin = Client()
    admin.force_login(owner.user)
    listing = admin.get("/admin/inbox/inboxsession/")
    page = admin.get(f"/admin/inbox/inboxsession/{body['sessionId']}/change/")
    assert "Skipped: No sender for this channel" in listing.content.decode()
    assert "Skipped: No sender for this channel" in page.content.decode()


def test_a_new_channel_sender_is_one_registry_entry(
    tenant, teammate, tenant_client, crm, httpserver, deliver_outbox, monkeypatch
):
    monkeypatch.setitem(CONFIRMATION_SENDERS, SessionChannel.SMS, "whatsapp")
    httpserver.expect_request(MESSAGES_PATH).respond_with_json({})

    body = handover(tenant_client, channel="sms")
    deliver_outbox()

    assert (body["confirmationMessage"], body["confirmationSkippedReason"]) == ("queued", None)
    assert confirmation_of(body["sessionId"]).channel == "whatsapp"
    assert len(httpserver.log) == 1


# --- a CRM that trickles its answer ------------------------------------------------------


def _read_request(conn) -> dict:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("Content-Length", 0))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return {"request_line": lines[0], "headers": headers, "body": body}


@pytest.fixture
def trickling_crm():
    """A CRM that sends its headers at once, then one body byte every 0.5 s: each read
    gets data in time, so only a deadline for the whole send can end it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    received = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                received.append(_read_request(conn))
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{"
                )
                while not stop.wait(0.5):
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        break

    thread = threading.Thread(target=serve, name="trickling-crm", daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", received=received)
    stop.set()
    thread.join(5)
    listener.close()


def test_a_trickling_answer_is_cut_at_the_deadline_and_retried_later(
    tenant, teammate, tenant_client, trickling_crm, deliver_outbox, settings, caplog
):
    settings.OUTBOX_SEND_DEADLINE_SECONDS = 1.5
    CrmIntegrationFactory(tenant=tenant, api_url=trickling_crm.url)
    body = handover(tenant_client)

    started = time.monotonic()
    deliver_outbox()
    elapsed = time.monotonic() - started

    assert elapsed < 5, f"the send took {elapsed:.1f} s"
    message = confirmation_of(body["sessionId"])
    [request] = trickling_crm.received
    assert request["request_line"].startswith(f"POST {MESSAGES_PATH} ")
    assert request["headers"]["Idempotency-Key"] == message.idempotency_key
    assert session_view(tenant_client, body["sessionId"])["confirmationStatus"] == "pending"
    assert message.attempts == 1
    assert message.last_error.startswith("No complete answer within the 1.5 s deadline")
    assert message.next_attempt_at > timezone.now() + timedelta(seconds=4)
    assert failure_lines(caplog) == []
    assert len(retry_lines(caplog)) == 1
