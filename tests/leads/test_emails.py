"""Lead notification emails: to the agent a lead is given to, and to admins on a breach.

Leads and notifications are made by the real services, whose on-commit enqueue runs
(`django_capture_on_commit_callbacks(execute=True)`); Celery runs the tasks in process,
retries included (see `task_failures`). Mail goes to Django's locmem outbox, through a
test backend that fails on purpose, or through the real Anymail Resend backend against a
mocked Resend API (`responses`).
"""

import json
import math
import smtplib
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

import pytest
import requests
import responses
import time_machine
from anymail.exceptions import AnymailRecipientsRefused, AnymailRequestsAPIError
from celery.signals import task_failure
from django.conf import settings as django_settings
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from config.celery import app as celery_app
from core.actor import Actor
from leads.emails import (
    Delivery,
    deliver_notification_email,
    enqueue_notification_emails,
    longest_retry_schedule_seconds,
    requeue_pending_notification_emails,
    retry_countdown_seconds,
)
from leads.models import (
    EmailStatus,
    Lead,
    LeadReassignment,
    Notification,
    NotificationKind,
)
from leads.services import claim_lead, create_lead, reassign_lead, sweep_sla_breaches
from leads.tasks import requeue_pending_notification_emails as requeue_task
from teams.models import Membership, Role
from tests.factories import MembershipFactory, UserFactory
from tests.leads.factories import NotificationFactory

BASE_URL = "https://app.handover.test"
FROM = "Handover <noreply@handover.test>"
RESEND_KEY = "re_live_9fKq2LmZ81xWv"
RESEND_EMAILS = "https://api.resend.com/emails"
T0 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)  # 14:30 in Asia/Kolkata (UTC+05:30)
LEAD = {
    "name": "Priya Sharma",
    "phone": "+91 98765 43210",
    "email": "priya@customer.test",
    "source": "facebook",
}
FLAKY_BACKEND = "tests.leads.test_emails.FlakyBackend"


# --- fixtures and helpers --------------------------------------------------------------


@pytest.fixture(autouse=True)
def task_failures():
    """Retries run, and a task that fails anyway fails the test.

    As in tests/inbox/test_confirmations.py: with `task_eager_propagates` on (set by
    tests/conftest.py), Celery 5.7 raises `Retry` out of an eager call and the retry
    never runs; with it off, the retry is applied at once, in process. Errors a task
    raises are collected through the `task_failure` signal instead.
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
def _email_settings(settings):
    settings.PUBLIC_BASE_URL = BASE_URL
    settings.DEFAULT_FROM_EMAIL = FROM
    settings.EMAIL_MAX_RETRIES = 5
    settings.EMAIL_RETRY_BACKOFF_SECONDS = 0
    settings.EMAIL_ATTEMPT_LEASE_SECONDS = 60


class FlakyBackend(LocmemBackend):
    """Fails the first `failures` sends with `error()`, then delivers to the outbox."""

    failures = 0
    error = None
    calls = 0

    def send_messages(self, messages):
        cls = type(self)
        cls.calls += 1
        if cls.failures > 0:
            cls.failures -= 1
            raise cls.error()
        return super().send_messages(messages)


@pytest.fixture
def flaky(settings):
    def configure(error, failures=1):
        FlakyBackend.error = staticmethod(error)
        FlakyBackend.failures = failures
        FlakyBackend.calls = 0
        settings.EMAIL_BACKEND = FLAKY_BACKEND
        return FlakyBackend

    yield configure
    FlakyBackend.failures, FlakyBackend.error, FlakyBackend.calls = 0, None, 0


def resend_error(status: int, message: str = "Something went wrong"):
    """What Anymail's Resend backend raises for an HTTP error answer."""

    def make():
        response = requests.Response()
        response.status_code = status
        response.reason = HTTPStatus(status).phrase
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps({"statusCode": status, "message": message}).encode()
        return AnymailRequestsAPIError(response=response, esp_name="Resend")

    return make


def resend_unreachable():
    """What Anymail raises when the request never got an answer: an error that is both
    AnymailRequestsAPIError and the requests error it wraps."""
    cause = requests.ConnectionError("Connection refused")
    error_class = type("AnymailRequestsAPIError", (AnymailRequestsAPIError, type(cause)), {})
    error = error_class(f"Error posting to {RESEND_EMAILS}:")
    error.__cause__ = cause
    return error


@pytest.fixture
def agent(tenant):
    return MembershipFactory(tenant=tenant, user__full_name="Asha Rao")


@pytest.fixture
def new_agent(tenant):
    return MembershipFactory(tenant=tenant, user__full_name="Ben Okafor")


@pytest.fixture
def kolkata(tenant):
    tenant.timezone = "Asia/Kolkata"
    tenant.save(update_fields=["timezone"])
    return tenant


@pytest.fixture
def make_lead(tenant, agent, django_capture_on_commit_callbacks):
    def make(*, to=None, execute=True, **fields):
        with django_capture_on_commit_callbacks(execute=execute):
            return create_lead(
                tenant=tenant,
                actor=Actor.system(),
                assigned_agent_id=(to or agent).pk,
                **{**LEAD, **fields},
            )

    return make


@pytest.fixture
def reassign(tenant, owner, new_agent, django_capture_on_commit_callbacks):
    def move(lead, *, reason, to=None, notes="", execute=True):
        with django_capture_on_commit_callbacks(execute=execute):
            return reassign_lead(
                tenant=tenant,
                lead_id=lead.pk,
                to_agent_id=(to or new_agent).pk,
                reason=reason,
                actor=Actor.for_membership(owner),
                reassigned_by=owner,
                notes=notes,
            )

    return move


def _notice(recipient, kind) -> Notification:
    return Notification.all_tenants.get(recipient=recipient, kind=kind)


def _html(message) -> str:
    [(content, mimetype)] = message.alternatives
    assert mimetype == "text/html"
    return content


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "leads.emails" and r.levelname == "WARNING"
    ]


def _lead_link(lead) -> str:
    return f"{BASE_URL}/leads/{lead.pk}/"


def _admin_link(lead) -> str:
    # The lead admin may not be registered yet; the email then links the lead page.
    try:
        return BASE_URL + reverse("admin:leads_lead_change", args=[lead.pk])
    except NoReverseMatch:
        return _lead_link(lead)


# --- the new agent's email after a reassignment ----------------------------------------


def test_a_reassigned_lead_emails_the_new_agent_everything_they_need(
    kolkata, agent, new_agent, make_lead, reassign, mailoutbox
):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
    mailoutbox.clear()

    # Not claimed within 5 minutes: the admin gives it to Ben at 09:06 UTC.
    with time_machine.travel(T0 + timedelta(minutes=6), tick=False):
        reassign(lead, reason="unclaimed")

    [message] = mailoutbox
    assert message.to == [new_agent.user.email]
    assert message.from_email == FROM
    assert message.subject == "Lead reassigned to you: Priya Sharma"
    body = message.body
    for value in LEAD.values():
        assert value in body
    assert "It was reassigned to you because the previous agent did not claim it in time." in body
    # A new 5-minute contact window from 09:06 UTC: 09:11 UTC is 14:41 in Kolkata.
    warning = "You have 5 minutes to contact this lead. Deadline: 2025-03-10 14:41 (Asia/Kolkata)."
    assert warning in body
    assert f"Open the lead: {_lead_link(lead)}" in body

    html = _html(message)
    assert f'href="{_lead_link(lead)}"' in html
    assert "You have 5 minutes to contact this lead" in html
    assert "2025-03-10 14:41 (Asia/Kolkata)" in html
    for value in LEAD.values():
        assert value in html

    notice = _notice(new_agent, NotificationKind.LEAD_REASSIGNED)
    assert notice.email_status == EmailStatus.SENT
    assert notice.email_sent_at == T0 + timedelta(minutes=6)
    assert notice.email_attempts == 1
    assert notice.email_last_error == ""


def test_a_lead_not_contacted_in_time_warns_about_the_reset_contact_window(
    kolkata, agent, new_agent, make_lead, reassign, mailoutbox
):
    kolkata.contact_window_minutes = 10
    kolkata.save(update_fields=["contact_window_minutes"])
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        claim_lead(tenant=kolkata, lead_id=lead.pk, agent=agent)
    mailoutbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=12), tick=False):
        reassign(lead, reason="no_contact")

    [message] = mailoutbox
    assert "because the previous agent did not contact the lead in time." in message.body
    # The reset window: 09:12 + 10 minutes = 09:22 UTC = 14:52 in Kolkata.
    warning = "You have 10 minutes to contact this lead. Deadline: 2025-03-10 14:52 (Asia/Kolkata)."
    assert warning in message.body
    assert "You have 10 minutes to contact this lead" in _html(message)


def test_a_manual_reassignment_names_the_admin_and_has_no_timer_warning(
    tenant, owner, agent, new_agent, make_lead, reassign, mailoutbox
):
    lead = make_lead()
    mailoutbox.clear()

    reassign(lead, reason="manual", notes="She prefers Hindi.")

    [message] = mailoutbox
    assert message.subject == "Lead reassigned to you: Priya Sharma"
    assert f"{owner.display_name} (admin) reassigned it to you." in message.body
    assert "Note: She prefers Hindi." in message.body
    assert "minutes to" not in message.body
    assert "Deadline" not in message.body
    assert "minutes to" not in _html(message)
    assert _lead_link(lead) in message.body


def test_a_new_lead_emails_its_agent_the_claim_deadline(kolkata, agent, make_lead, mailoutbox):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()

    [message] = mailoutbox
    assert message.to == [agent.user.email]
    assert message.subject == "New lead for you: Priya Sharma"
    for value in LEAD.values():
        assert value in message.body
    warning = "You have 5 minutes to claim this lead. Deadline: 2025-03-10 14:35 (Asia/Kolkata)."
    assert warning in message.body
    assert f'href="{_lead_link(lead)}"' in _html(message)
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.SENT
    assert notice.email_sent_at == T0


def test_lead_details_are_escaped_in_html_and_plain_in_text(make_lead, mailoutbox):
    make_lead(name='<b>Bob & "Sons"</b>', source="<script>x</script>")

    [message] = mailoutbox
    assert message.subject == 'New lead for you: <b>Bob & "Sons"</b>'
    assert '<b>Bob & "Sons"</b>' in message.body
    html = _html(message)
    assert "&lt;b&gt;Bob &amp; &quot;Sons&quot;&lt;/b&gt;" in html
    assert "<b>Bob" not in html
    assert "<script>" not in html


def test_missing_contact_details_read_not_given(make_lead, mailoutbox):
    make_lead(email="", source="")

    [message] = mailoutbox
    assert "Email:  not given" in message.body
    assert "Source: not given" in message.body


# --- admins' emails on a breach --------------------------------------------------------


def test_a_missed_claim_window_emails_every_active_admin_of_the_tenant_only(
    kolkata,
    owner,
    teammate,
    outsider,
    agent,
    make_lead,
    mailoutbox,
    django_capture_on_commit_callbacks,
):
    super_admin = MembershipFactory(tenant=kolkata, role=Role.SUPER_ADMIN)
    MembershipFactory(tenant=kolkata, role=Role.ADMIN, is_active=False)
    MembershipFactory(tenant=kolkata, role=Role.ADMIN, user__is_active=False)
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
    mailoutbox.clear()

    with (
        time_machine.travel(T0 + timedelta(minutes=6), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        sweep_sla_breaches()

    assert sorted(m.to[0] for m in mailoutbox) == sorted([owner.user.email, super_admin.user.email])
    message = mailoutbox[0]
    assert message.subject == "Lead not claimed in time: Priya Sharma"
    assert (
        f"Asha Rao ({agent.user.email}) missed the claim window, which ended at "
        "2025-03-10 14:35 (Asia/Kolkata)." in message.body
    )
    assert "Reassign it to another agent from the admin." in message.body
    assert f"Open the lead in the admin: {_admin_link(lead)}" in message.body
    assert f'href="{_admin_link(lead)}"' in _html(message)
    notices = Notification.all_tenants.filter(kind=NotificationKind.CLAIM_SLA_BREACHED)
    assert {n.email_status for n in notices} == {EmailStatus.SENT}
    assert notices.count() == 2


def test_a_missed_contact_window_emails_the_admins(
    kolkata, owner, agent, make_lead, mailoutbox, django_capture_on_commit_callbacks
):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
    with time_machine.travel(T0 + timedelta(minutes=1), tick=False):
        claim_lead(tenant=kolkata, lead_id=lead.pk, agent=agent)
    mailoutbox.clear()

    with (
        time_machine.travel(T0 + timedelta(minutes=7), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        sweep_sla_breaches()

    [message] = mailoutbox
    assert message.to == [owner.user.email]
    assert message.subject == "Lead not contacted in time: Priya Sharma"
    assert "Priya Sharma was not contacted in time." in message.body
    assert "Asha Rao" in message.body
    assert "missed the contact window, which ended at 2025-03-10 14:36 (Asia/Kolkata)." in (
        message.body
    )


def test_after_an_automatic_reassignment_admins_learn_who_missed_and_who_has_it_now(
    kolkata, owner, agent, new_agent, make_lead, mailoutbox, django_capture_on_commit_callbacks
):
    kolkata.auto_reassign_on_breach = True
    kolkata.save(update_fields=["auto_reassign_on_breach"])
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
    mailoutbox.clear()

    with (
        time_machine.travel(T0 + timedelta(minutes=6), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        sweep_sla_breaches()

    by_recipient = {m.to[0]: m for m in mailoutbox}
    assert set(by_recipient) == {owner.user.email, new_agent.user.email}
    to_admin = by_recipient[owner.user.email].body
    assert "Asha Rao" in to_admin
    assert "missed the claim window, which ended at 2025-03-10 14:35 (Asia/Kolkata)." in to_admin
    assert "The lead has since been reassigned to Ben Okafor." in to_admin
    to_agent = by_recipient[new_agent.user.email].body
    assert "did not claim it in time" in to_agent
    warning = "You have 5 minutes to contact this lead. Deadline: 2025-03-10 14:41 (Asia/Kolkata)."
    assert warning in to_agent
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent == new_agent


def test_an_admin_deactivated_before_the_email_went_out_is_skipped(
    tenant, owner, make_lead, mailoutbox, django_capture_on_commit_callbacks
):
    other_admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)
    lead = make_lead()
    mailoutbox.clear()
    with (
        time_machine.travel(lead.claim_deadline + timedelta(seconds=1)),
        django_capture_on_commit_callbacks(execute=False) as callbacks,
    ):
        sweep_sla_breaches()
    Membership.all_tenants.filter(pk=owner.pk).update(is_active=False)

    for callback in callbacks:
        callback()

    assert [m.to for m in mailoutbox] == [[other_admin.user.email]]
    skipped = _notice(owner, NotificationKind.CLAIM_SLA_BREACHED)
    assert skipped.email_status == EmailStatus.SKIPPED
    assert "no longer an active agent" in skipped.email_last_error


def test_an_agent_whose_lead_moved_on_before_the_email_went_out_gets_none(
    agent, new_agent, make_lead, reassign, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as first_email:
        lead = make_lead(execute=False)
    reassign(lead, reason="manual")

    for callback in first_email:
        callback()

    assert [m.to for m in mailoutbox] == [[new_agent.user.email]]
    skipped = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert skipped.email_status == EmailStatus.SKIPPED
    assert skipped.email_last_error == "The lead has since been given to another agent."


# --- failures and retries --------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        resend_error(503),
        resend_error(500),
        resend_error(429),
        resend_unreachable,
        lambda: requests.ConnectionError("Connection reset by peer"),
        lambda: requests.ReadTimeout("Read timed out"),
        lambda: TimeoutError("timed out"),
        lambda: smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
        lambda: smtplib.SMTPResponseException(421, b"Service not available, try later"),
    ],
    ids=["503", "500", "429", "unreachable", "connection", "timeout", "socket", "smtp", "smtp421"],
)
def test_a_transient_failure_is_retried_until_the_email_is_sent(
    flaky, agent, make_lead, mailoutbox, error
):
    backend = flaky(error, failures=1)

    make_lead()

    assert backend.calls == 2
    assert len(mailoutbox) == 1
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.SENT
    assert notice.email_attempts == 2
    assert notice.email_last_error == ""  # cleared once sent
    assert notice.email_sent_at is not None


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        (resend_error(400, "Invalid `to` field"), "Resend API response 400"),
        (resend_error(422, "The domain is not verified"), "The domain is not verified"),
        (resend_error(401, "API key is invalid"), "401"),
        (lambda: AnymailRecipientsRefused(), "All message recipients were rejected"),
        (
            lambda: smtplib.SMTPRecipientsRefused({"x@y.test": (550, b"No such user")}),
            "SMTPRecipientsRefused",
        ),
        (lambda: smtplib.SMTPAuthenticationError(535, b"Bad credentials"), "535"),
    ],
    ids=["400", "422", "401", "refused", "smtp-refused", "smtp-auth"],
)
def test_a_permanent_failure_fails_at_once_without_retrying(
    flaky, agent, make_lead, mailoutbox, caplog, error, stored
):
    backend = flaky(error, failures=math.inf)

    make_lead()

    assert backend.calls == 1
    assert mailoutbox == []
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.FAILED
    assert notice.email_attempts == 1
    assert stored in notice.email_last_error
    assert notice.email_sent_at is None
    assert _warnings(caplog) == [
        "Lead notification email failed (the lead is unchanged): "
        f"{notice.email_last_error} [notification {notice.pk}, kind=lead_assigned, "
        f"tenantId={notice.tenant_id}]"
    ]


def test_after_the_last_retry_the_email_fails_with_the_last_error(
    flaky, settings, agent, make_lead, mailoutbox, caplog
):
    settings.EMAIL_MAX_RETRIES = 2
    backend = flaky(resend_error(503, "Resend is down"), failures=math.inf)

    make_lead()

    assert backend.calls == 3
    assert mailoutbox == []
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.FAILED
    assert notice.email_attempts == 3  # EMAIL_MAX_RETRIES + 1
    assert "Resend API response 503" in notice.email_last_error
    assert "Resend is down" in notice.email_last_error
    assert notice.email_last_error.endswith("Gave up after 3 attempts.")
    assert len(_warnings(caplog)) == 4  # each of the 3 attempts, then giving up


def test_a_failing_email_leaves_the_reassignment_committed(
    flaky, settings, tenant, agent, new_agent, make_lead, reassign, mailoutbox
):
    settings.EMAIL_MAX_RETRIES = 1
    lead = make_lead()
    flaky(resend_error(503), failures=math.inf)

    result = reassign(lead, reason="manual")

    lead = Lead.all_tenants.get(pk=lead.pk)
    assert lead.assigned_agent == new_agent
    assert lead.previous_agent == agent
    assert lead.reassignment_count == 1
    assert LeadReassignment.objects.for_tenant(tenant).get().pk == result.reassignment.pk
    assert Membership.all_tenants.get(pk=new_agent.pk).current_lead_count == 1
    assert Membership.all_tenants.get(pk=agent.pk).current_lead_count == 0
    assert _notice(new_agent, NotificationKind.LEAD_REASSIGNED).email_status == EmailStatus.FAILED


def test_with_eager_propagation_a_retry_never_reaches_the_reassignment(
    flaky, agent, new_agent, make_lead, reassign, mailoutbox
):
    # Celery 5.7 raises Retry out of an eager call when propagation is on: the email task
    # must swallow it, and the row waits for the periodic requeue.
    lead = make_lead()
    celery_app.conf.task_eager_propagates = True  # the task_failures fixture restores it
    flaky(resend_error(503), failures=math.inf)

    reassign(lead, reason="manual")

    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent == new_agent
    notice = _notice(new_agent, NotificationKind.LEAD_REASSIGNED)
    assert notice.email_status == EmailStatus.PENDING
    assert notice.email_attempts == 1
    assert "503" in notice.email_last_error


def test_one_failing_email_does_not_stop_the_others_of_the_same_batch(
    flaky, tenant, owner, make_lead, mailoutbox, django_capture_on_commit_callbacks
):
    MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN)
    lead = make_lead()
    mailoutbox.clear()
    # An error nobody planned for: permanent, for the first email of the batch only.
    backend = flaky(lambda: RuntimeError("boom"), failures=1)

    with (
        time_machine.travel(lead.claim_deadline + timedelta(seconds=1)),
        django_capture_on_commit_callbacks(execute=True),
    ):
        sweep_sla_breaches()

    assert backend.calls == 2
    notices = Notification.all_tenants.filter(kind=NotificationKind.CLAIM_SLA_BREACHED)
    statuses = sorted(n.email_status for n in notices)
    assert statuses == [EmailStatus.FAILED, EmailStatus.SENT]
    failed = notices.get(email_status=EmailStatus.FAILED)
    assert failed.email_last_error == "RuntimeError: boom"
    assert failed.email_attempts == 1
    [message] = mailoutbox
    assert message.to == [notices.get(email_status=EmailStatus.SENT).recipient.user.email]


def test_a_recipient_without_an_email_address_fails_without_sending(tenant, make_lead, mailoutbox):
    nobody = MembershipFactory(tenant=tenant, user=UserFactory(email=""))

    make_lead(to=nobody)

    assert mailoutbox == []
    notice = _notice(nobody, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.FAILED
    assert notice.email_last_error == "The recipient has no email address."


# --- through the real Resend backend ---------------------------------------------------


@pytest.fixture
def resend(settings):
    settings.EMAIL_BACKEND = "anymail.backends.resend.EmailBackend"
    settings.RESEND_API_KEY = RESEND_KEY
    settings.ANYMAIL = {"RESEND_API_KEY": RESEND_KEY}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        yield api


def test_the_resend_api_gets_the_email_with_its_notification_id(resend, agent, make_lead):
    resend.post(RESEND_EMAILS, json={"id": "re_msg_1"})

    lead = make_lead()

    [call] = resend.calls
    assert call.request.headers["Authorization"] == f"Bearer {RESEND_KEY}"
    sent = json.loads(call.request.body)
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert sent["from"] == FROM
    assert sent["to"] == [agent.user.email]
    assert sent["subject"] == "New lead for you: Priya Sharma"
    assert _lead_link(lead) in sent["text"]
    assert f'href="{_lead_link(lead)}"' in sent["html"]
    assert json.loads(sent["headers"]["X-Metadata"]) == {
        "notification_id": str(notice.pk),
        "tenant_id": str(lead.tenant_id),
        "kind": "lead_assigned",
    }
    assert notice.email_status == EmailStatus.SENT


@pytest.mark.parametrize(
    "first_answer",
    [
        {"status": 503, "json": {"message": "busy"}},
        {"status": 429, "json": {"message": "Too many requests"}},
        {"body": requests.ConnectionError("Connection refused")},
        {"body": requests.ReadTimeout("Read timed out")},
    ],
    ids=["503", "429", "connection", "timeout"],
)
def test_resend_outages_are_retried(resend, agent, make_lead, mailoutbox, first_answer):
    resend.post(RESEND_EMAILS, **first_answer)
    resend.post(RESEND_EMAILS, json={"id": "re_msg_2"})

    make_lead()

    assert len(resend.calls) == 2
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.SENT
    assert notice.email_attempts == 2


@pytest.mark.parametrize("status", [400, 401, 403, 422])
def test_resend_refusals_fail_at_once_and_never_show_the_api_key(
    resend, agent, make_lead, caplog, status
):
    # A careless error message that quotes the key back.
    resend.post(
        RESEND_EMAILS, status=status, json={"message": f"API key {RESEND_KEY} cannot send this"}
    )

    make_lead()

    assert len(resend.calls) == 1
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.FAILED
    assert f"Resend API response {status}" in notice.email_last_error
    assert "[redacted]" in notice.email_last_error
    assert RESEND_KEY not in notice.email_last_error
    assert _warnings(caplog)
    assert RESEND_KEY not in caplog.text


# --- once, and not lost ----------------------------------------------------------------


def test_an_email_already_sent_is_not_sent_again(agent, make_lead, mailoutbox):
    make_lead()
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.SENT

    assert deliver_notification_email(notification_id=notice.pk) == Delivery.NOT_PENDING
    assert enqueue_notification_emails([notice.pk]) is True
    with time_machine.travel(timezone.now() + timedelta(hours=1)):
        assert requeue_pending_notification_emails(older_than_seconds=120) == 0

    assert len(mailoutbox) == 1
    assert Notification.all_tenants.get(pk=notice.pk).email_attempts == 1


class DuplicateTaskBackend(LocmemBackend):
    """While it sends, a duplicate task for the same notification runs (a requeue racing
    the original attempt)."""

    duplicate_results: list = []

    def send_messages(self, messages):
        notification_id = messages[0].metadata["notification_id"]
        type(self).duplicate_results.append(
            deliver_notification_email(notification_id=notification_id)
        )
        return super().send_messages(messages)


def test_a_duplicate_task_does_not_send_while_an_attempt_is_in_flight(
    settings, agent, make_lead, mailoutbox
):
    settings.EMAIL_BACKEND = "tests.leads.test_emails.DuplicateTaskBackend"
    DuplicateTaskBackend.duplicate_results = []

    make_lead()

    assert DuplicateTaskBackend.duplicate_results == [Delivery.IN_PROGRESS]
    assert len(mailoutbox) == 1
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert notice.email_status == EmailStatus.SENT
    assert notice.email_attempts == 1


@contextmanager
def _broker_down():
    """Tasks go to a broker that refuses connections, as when Redis is down (the same
    helper as tests/inbox/test_confirmations.py)."""
    conf = celery_app.conf
    previous = (conf.task_always_eager, conf.broker_url)
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


def test_an_email_that_could_not_be_enqueued_is_sent_by_the_periodic_requeue(
    agent, new_agent, make_lead, reassign, mailoutbox, caplog
):
    lead = make_lead()
    mailoutbox.clear()
    with _broker_down():
        reassign(lead, reason="manual")

    notice = _notice(new_agent, NotificationKind.LEAD_REASSIGNED)
    start = notice.created_at
    assert notice.email_status == EmailStatus.PENDING
    assert notice.email_attempts == 0
    assert mailoutbox == []
    assert "stay pending" in caplog.text

    # Not yet: it might still be on its way.
    with time_machine.travel(start + timedelta(seconds=60), tick=False):
        assert requeue_task.apply().get() == 0
    assert mailoutbox == []

    with time_machine.travel(start + timedelta(seconds=121), tick=False):
        assert requeue_task.apply().get() == 1

    [message] = mailoutbox
    assert message.to == [new_agent.user.email]
    notice.refresh_from_db()
    assert notice.email_status == EmailStatus.SENT
    assert notice.email_attempts == 1
    assert notice.email_sent_at == start + timedelta(seconds=121)


def test_the_requeue_takes_stale_pending_emails_of_every_tenant_and_leaves_the_rest(
    tenant, other_tenant, mailoutbox
):
    start = timezone.now().replace(microsecond=0)
    with time_machine.travel(start, tick=False):
        stale = NotificationFactory(tenant=tenant)
        stale_elsewhere = NotificationFactory(tenant=other_tenant)
        # Attempted, and waiting for its next retry: the retry will send it.
        waiting_for_retry = NotificationFactory(tenant=tenant, email_attempts=2)
        done = [
            NotificationFactory(tenant=tenant, email_status=status)
            for status in (EmailStatus.SENT, EmailStatus.FAILED, EmailStatus.SKIPPED)
        ]
    with time_machine.travel(start + timedelta(seconds=100), tick=False):
        fresh = NotificationFactory(tenant=tenant)

    with time_machine.travel(start + timedelta(seconds=121), tick=False):
        assert requeue_pending_notification_emails(older_than_seconds=120) == 2

    sent_to = sorted(m.to[0] for m in mailoutbox)
    assert sent_to == sorted([stale.recipient.user.email, stale_elsewhere.recipient.user.email])
    for row, status in [
        (stale, EmailStatus.SENT),
        (stale_elsewhere, EmailStatus.SENT),
        (waiting_for_retry, EmailStatus.PENDING),
        (fresh, EmailStatus.PENDING),
    ]:
        row.refresh_from_db()
        assert row.email_status == status
    assert [Notification.all_tenants.get(pk=n.pk).email_attempts for n in done] == [0, 0, 0]

    # A retry that never came (its task was lost): after the whole retry schedule it is
    # taken again.
    later = start + timedelta(seconds=121 + longest_retry_schedule_seconds() + 1)
    with time_machine.travel(later, tick=False):
        assert requeue_pending_notification_emails(older_than_seconds=120) == 2
    waiting_for_retry.refresh_from_db()
    assert waiting_for_retry.email_status == EmailStatus.SENT
    assert waiting_for_retry.email_attempts == 3


def test_a_requeued_email_whose_attempts_are_spent_fails_instead_of_sending(
    settings, tenant, mailoutbox
):
    settings.EMAIL_MAX_RETRIES = 2
    notice = NotificationFactory(
        tenant=tenant, email_attempts=3, email_last_error="Resend API response 503"
    )

    assert deliver_notification_email(notification_id=notice.pk) == Delivery.FAILED

    assert mailoutbox == []
    notice.refresh_from_db()
    assert notice.email_status == EmailStatus.FAILED
    assert notice.email_last_error == "Resend API response 503 Gave up after 3 attempts."


def test_the_requeue_runs_every_minute():
    entry = django_settings.CELERY_BEAT_SCHEDULE["leads-requeue-pending-emails"]
    assert entry == {
        "task": "leads.tasks.requeue_pending_notification_emails",
        "schedule": 60.0,
    }
    assert entry["task"] in celery_app.tasks


def test_retry_backoff_grows_exponentially_and_is_capped(settings):
    settings.EMAIL_RETRY_BACKOFF_SECONDS = 5
    for retries, base in [(0, 5), (1, 10), (3, 40), (6, 300), (20, 300)]:
        countdown = retry_countdown_seconds(retries)
        assert base <= countdown <= base * 1.1


def test_an_email_failure_never_changes_the_lead(
    flaky, agent, make_lead, mailoutbox, django_capture_on_commit_callbacks
):
    flaky(resend_error(400), failures=math.inf)
    with django_capture_on_commit_callbacks(execute=False) as email:
        lead = make_lead(execute=False)
    before = Lead.all_tenants.filter(pk=lead.pk).values().get()

    for callback in email:
        callback()

    assert _notice(agent, NotificationKind.LEAD_ASSIGNED).email_status == EmailStatus.FAILED
    assert Lead.all_tenants.filter(pk=lead.pk).values().get() == before
