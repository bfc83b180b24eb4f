"""Structured logs: `LOG_FORMAT=json` writes one JSON object per line, and every line
names the request, tenant, session, lead and outbound message it is about
(core.log_context); the seed's log lines keep their exact text as the `message`.

The JSON handler here is built from the settings' own LOGGING dict (its `json` formatter
and `log_context` filter), so the tests read what production writes; the last test runs
a command with LOG_FORMAT=json in a subprocess and parses every line it writes.
"""

import copy
import io
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from logging.config import DictConfigurator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from core import log_context
from core.actor import Actor
from inbox.models import InboxSession
from leads.models import Lead
from leads.services import create_lead, sweep_sla_breaches
from outbox.models import MessageStatus, OutboundMessage
from teams.models import Role
from tests.factories import MembershipFactory
from tests.inbox.factories import CrmIntegrationFactory

HANDOVER_URL = "/api/v1/handover"
MESSAGES_PATH = "/api/meta/PN1/messages"
CONTEXT_FIELDS = ("request_id", "tenant_id", "session_id", "lead_id", "message_id")
BASE_DIR = Path(__file__).resolve().parents[2]


def unassigned_text(session_id, tenant) -> str:
    return (
        f"Handover session {session_id} left unassigned. Strategy=round_robin, "
        f"availableAgents=0 (tenantId={tenant.id}, teamId=none). Check: strategy is "
        '"manual", team has no members, or tenant has no member/admin/super_admin roles.'
    )


def configured(name: str, kind: str):
    """The formatter or filter `name` exactly as settings.LOGGING configures it."""
    configurator = DictConfigurator(copy.deepcopy(settings.LOGGING))
    section = configurator.config[f"{kind}s"]
    return getattr(configurator, f"configure_{kind}")(section[name])


class JsonLines:
    def __init__(self, stream: io.StringIO):
        self.stream = stream

    def all(self) -> list[dict]:
        lines = self.stream.getvalue().splitlines()
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pytest.fail(f"a log line is not JSON: {line!r}")
        return parsed

    def with_message(self, start: str) -> list[dict]:
        return [line for line in self.all() if line["message"].startswith(start)]


@pytest.fixture(autouse=True)
def _fresh_log_context():
    """A test is a scope of its own, like a request: what it binds ends with it."""
    token = log_context.start()
    yield
    log_context.reset(token)


@pytest.fixture
def json_logs(caplog):
    caplog.set_level(logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(configured("json", "formatter"))
    handler.addFilter(configured("log_context", "filter"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield JsonLines(stream)
    root.removeHandler(handler)


def handover(client, contact="+4915100000001", **headers):
    response = client.post(
        HANDOVER_URL,
        {"contactId": contact, "sendHandoverMessage": False},
        format="json",
        **headers,
    )
    assert response.status_code in (200, 201), response.content
    return response


# --- requests ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_unassigned_handover_logs_the_seed_line_as_json_with_its_context(
    tenant, tenant_client, api_key, json_logs
):
    response = handover(tenant_client, HTTP_X_REQUEST_ID="lb-7f3a.42")

    session_id = response.json()["sessionId"]
    assert response["X-Request-ID"] == "lb-7f3a.42"
    [line] = json_logs.with_message("Handover session ")
    assert line["message"] == unassigned_text(session_id, tenant)
    assert line["level"] == "WARNING"
    assert line["logger"] == "inbox.services"
    assert line["request_id"] == "lb-7f3a.42"
    assert line["tenant_id"] == str(tenant.id)
    assert line["session_id"] == session_id
    assert line["lead_id"] is None and line["message_id"] is None
    assert line["time"].startswith(str(timezone.now().year))
    # The API key is never on a line, whole or in part beyond its public prefix.
    assert api_key[1] not in json_logs.stream.getvalue()


@pytest.mark.django_db
def test_a_request_without_an_id_gets_one_on_its_lines_and_in_the_answer(
    tenant, tenant_client, json_logs
):
    first = handover(tenant_client, contact="a")
    second = handover(tenant_client, contact="b")

    ids = [first["X-Request-ID"], second["X-Request-ID"]]
    assert all(len(value) == 32 for value in ids), ids
    assert ids[0] != ids[1]
    lines = json_logs.with_message("Handover session ")
    assert [line["request_id"] for line in lines] == ids


@pytest.mark.parametrize(
    "bad",
    ["a" * 129, "two words", "semi;colon", "<script>", 'quote"d', "ümlaut"],
)
@pytest.mark.django_db
def test_an_unsafe_request_id_is_replaced(tenant, tenant_client, json_logs, bad):
    response = handover(tenant_client, HTTP_X_REQUEST_ID=bad)

    replaced = response["X-Request-ID"]
    assert replaced != bad
    assert len(replaced) == 32 and all(c in "0123456789abcdef" for c in replaced)
    [line] = json_logs.with_message("Handover session ")
    assert line["request_id"] == replaced


@pytest.mark.django_db
def test_the_longest_accepted_request_id_is_kept(tenant, tenant_client):
    longest = "r:" + "x" * 126
    assert handover(tenant_client, HTTP_X_REQUEST_ID=longest)["X-Request-ID"] == longest


@pytest.mark.django_db
def test_nothing_of_one_request_shows_on_the_next(tenant, tenant_client, json_logs):
    session_id = handover(tenant_client).json()["sessionId"]

    # No API key: DRF answers 401 and Django logs "Unauthorized: …" for this request.
    response = APIClient().get(f"/api/v1/sessions/{session_id}", HTTP_X_REQUEST_ID="second")

    assert response.status_code == 401
    [line] = json_logs.with_message("Unauthorized: ")
    assert line["request_id"] == "second", "Django's own line names the request too"
    assert line["tenant_id"] is None
    assert line["session_id"] is None
    assert "request" not in line, "the request's text (its query string) is not written"
    assert log_context.current() == {}, "the request's fields ended with it"


@pytest.mark.django_db
def test_an_api_key_in_the_query_string_is_not_written(tenant, api_key, json_logs):
    response = APIClient().get(f"/api/v1/no-such-page?apiKey={api_key[1]}")

    assert response.status_code == 404
    assert json_logs.with_message("Not Found: ")
    assert api_key[1] not in json_logs.stream.getvalue()


@pytest.mark.django_db
def test_the_request_id_survives_a_view_that_crashes(tenant, tenant_client, monkeypatch, json_logs):
    def crash(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("inbox.api.handover", crash)
    tenant_client.raise_request_exception = False

    response = tenant_client.post(
        HANDOVER_URL, {"contactId": "x"}, format="json", HTTP_X_REQUEST_ID="crash-1"
    )

    assert response.status_code == 500
    assert response["X-Request-ID"] == "crash-1"
    [line] = json_logs.with_message("Internal Server Error: ")
    assert (line["request_id"], line["tenant_id"]) == ("crash-1", str(tenant.id))
    assert "RuntimeError: boom" in line["exc_info"]
    assert log_context.current() == {}


# --- delivery ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_refused_confirmation_logs_the_seed_failure_line_once_with_its_context(
    tenant, teammate, tenant_client, httpserver, deliver_outbox, json_logs, settings
):
    settings.CRM_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    CrmIntegrationFactory(tenant=tenant, api_url=httpserver.url_for("/"))
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"error": {"message": "Recipient phone number not in allowed list"}}, status=400
    )
    response = tenant_client.post(HANDOVER_URL, {"contactId": "+4915100000002"}, format="json")
    session_id = response.json()["sessionId"]

    deliver_outbox()

    message = InboxSession.all_tenants.get(pk=session_id).confirmation_message
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    lines = json_logs.with_message("Handover confirmation message failed")
    assert [line["message"] for line in lines] == [
        "Handover confirmation message failed (assignment already done): "
        f"{message.last_error} "
        f"[session {session_id}, message {message.pk}, tenantId={tenant.id}]"
    ]
    [line] = lines
    assert line["level"] == "WARNING"
    assert (line["tenant_id"], line["session_id"], line["message_id"]) == (
        str(tenant.id),
        session_id,
        str(message.pk),
    )
    assert line["request_id"] is None, "sent by the worker, not in the request"
    assert log_context.current() == {}, "the send's fields ended with it"


@pytest.mark.django_db
def test_a_failed_lead_email_logs_its_line_with_the_lead(tenant, json_logs, settings):
    from tests.leads.test_emails import FlakyBackend, resend_error

    FlakyBackend.error = staticmethod(resend_error(422, "Invalid `to` field"))
    FlakyBackend.failures = 1
    settings.EMAIL_BACKEND = "tests.leads.test_emails.FlakyBackend"
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    lead = create_lead(tenant=tenant, actor=Actor.system(), name="Lead", assigned_agent_id=agent.pk)
    log_context.bind(lead_id=None, tenant_id=None)  # only the send may name them now
    from outbox.delivery import deliver_due

    try:
        deliver_due(limit=100)
    finally:
        FlakyBackend.failures, FlakyBackend.error = 0, None

    message = OutboundMessage.all_tenants.get(channel="email", tenant=tenant)
    assert message.status == MessageStatus.FAILED
    [line] = json_logs.with_message("Lead notification email failed (the lead is unchanged): ")
    assert line["message"].startswith(
        f"Lead notification email failed (the lead is unchanged): {message.last_error}"
    )
    assert (line["tenant_id"], line["lead_id"], line["message_id"]) == (
        str(tenant.id),
        str(lead.pk),
        str(message.pk),
    )


# --- sweeps ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_breach_line_of_a_sweep_names_its_own_lead(tenant, json_logs):
    tenant.auto_reassign_on_breach = True
    tenant.save(update_fields=["auto_reassign_on_breach"])
    alice = MembershipFactory(tenant=tenant, role=Role.MEMBER)  # nobody else to take them
    leads = [
        create_lead(tenant=tenant, actor=Actor.system(), name=name, assigned_agent_id=alice.pk)
        for name in ("First", "Second")
    ]
    log_context.bind(lead_id=None, tenant_id=None)
    Lead.all_tenants.filter(pk__in=[lead.pk for lead in leads]).update(
        claim_deadline=timezone.now() - timedelta(minutes=1)
    )

    assert sweep_sla_breaches() == {"claim": 2, "contact": 0}
    logging.getLogger("tests").info("after the sweep")

    lines = json_logs.with_message("Lead ")
    assert sorted((line["lead_id"], line["tenant_id"]) for line in lines) == sorted(
        (str(lead.pk), str(tenant.id)) for lead in leads
    )
    for line in lines:
        assert line["message"] == (
            f"Lead {line['lead_id']} breached claim; nobody else can take it (no_agents)"
        )
    [after] = json_logs.with_message("after the sweep")
    assert after["lead_id"] is None and after["tenant_id"] is None


@pytest.mark.django_db
def test_a_task_logs_under_its_own_id_and_the_callers_context_comes_back(tenant, json_logs):
    from leads.tasks import check_sla

    tenant.auto_reassign_on_breach = True
    tenant.save(update_fields=["auto_reassign_on_breach"])
    alice = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    lead = create_lead(tenant=tenant, actor=Actor.system(), name="Late", assigned_agent_id=alice.pk)
    Lead.all_tenants.filter(pk=lead.pk).update(claim_deadline=timezone.now() - timedelta(minutes=1))
    log_context.bind(request_id="outer", tenant_id=None, lead_id=None)

    result = check_sla.apply()

    [line] = json_logs.with_message(f"Lead {lead.pk} ")
    assert line["request_id"] == result.id != "outer"
    assert log_context.current() == {"request_id": "outer"}


def test_an_unknown_log_format_stops_the_start():
    done = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=BASE_DIR,
        env={**os.environ, "LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert 'LOG_FORMAT must be "plain" or "json"' in done.stderr


# --- the plain format --------------------------------------------------------------------


def test_plain_is_the_default_and_reads_as_before_without_context():
    assert settings.LOG_FORMAT == "plain"
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "plain"
    assert "log_context" in settings.LOGGING["handlers"]["console"]["filters"]
    record = logging.makeLogRecord(
        {"name": "inbox.services", "levelno": 30, "levelname": "WARNING", "msg": "Seed %s"}
    )
    record.args = ("line",)
    configured("log_context", "filter").filter(record)
    before = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")

    assert configured("plain", "formatter").format(record) == before.format(record)


def test_plain_lines_show_the_fields_that_are_set():
    record = logging.makeLogRecord({"name": "outbox", "levelname": "WARNING", "msg": "Failed"})
    with log_context.bound(request_id="r1", tenant_id="t1", message_id="m1"):
        configured("log_context", "filter").filter(record)

    line = configured("plain", "formatter").format(record)

    assert line.endswith(" WARNING outbox [req=r1 tenant=t1 message=m1] Failed")


# --- a real process ------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_command_run_with_log_format_json_writes_only_json_lines(tenant):
    from tests.e2e.processes import database_url_for_tests

    tenant.auto_reassign_on_breach = True
    tenant.save(update_fields=["auto_reassign_on_breach"])
    alice = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    lead = create_lead(tenant=tenant, actor=Actor.system(), name="Late", assigned_agent_id=alice.pk)
    Lead.all_tenants.filter(pk=lead.pk).update(claim_deadline=timezone.now() - timedelta(minutes=1))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LOG_LEVEL", "REDIS_URL", "DATABASE_URL")
    }
    env.update(
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        DATABASE_URL=database_url_for_tests(),
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        PYTHONWARNINGS="ignore",
    )

    done = subprocess.run(
        [sys.executable, "manage.py", "check_sla", "--json"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["claim"] == 1, done.stdout
    lines = done.stderr.splitlines()
    assert lines, "the command logged nothing"
    parsed = []
    for text in lines:
        try:
            parsed.append(json.loads(text))
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {text!r}")
    assert all(set(CONTEXT_FIELDS) <= set(line) for line in parsed), parsed
    [breach] = [line for line in parsed if line["message"].startswith(f"Lead {lead.pk} ")]
    assert (breach["lead_id"], breach["tenant_id"]) == (str(lead.pk), str(tenant.id))
