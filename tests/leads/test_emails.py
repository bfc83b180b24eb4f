"""Lead notification emails: to the agent a lead is given to, and to admins on a breach.

Leads and notices are made by the real services, which queue one outbox message per
notice in the transaction of the change; `deliver_outbox` then does what the outbox
worker does (claim due messages, render them, send them). Mail goes to Django's locmem
outbox (`mailoutbox`), through a test backend that fails on purpose, or through the
production Resend backend against a local HTTP server (pytest-httpserver). The outbox's
own state machine (leases, claims, backoff) is covered by tests/outbox.
"""

import json
import logging
import smtplib
import socket
import time
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

import pytest
import requests
import time_machine
from anymail.exceptions import AnymailRecipientsRefused, AnymailRequestsAPIError
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from werkzeug import Response

from audit.models import ActivityLog
from core.actor import Actor
from leads.models import Lead, LeadReassignment, Notification, NotificationKind
from leads.services import claim_lead, close_lead, create_lead, reassign_lead, sweep_sla_breaches
from outbox import email as outbox_email
from outbox.delivery import deliver_due
from outbox.models import MessageStatus, OutboundMessage
from teams.models import Membership, Role, User
from tests.factories import MembershipFactory, UserFactory
from tests.leads.factories import NotificationFactory

BASE_URL = "https://app.handover.test"
FROM = "Handover <noreply@handover.test>"
RESEND_KEY = "re_live_9fKq2LmZ81xWv"
T0 = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)  # 14:30 in Asia/Kolkata (UTC+05:30)
LEAD = {
    "name": "Priya Sharma",
    "phone": "+91 98765 43210",
    "email": "priya@customer.test",
    "source": "facebook",
}
FLAKY_BACKEND = "tests.leads.test_emails.FlakyBackend"
FAILURE_LINE = "Lead notification email failed (the lead is unchanged): "


# --- fixtures and helpers --------------------------------------------------------------


@pytest.fixture(autouse=True)
def _email_settings(settings):
    settings.PUBLIC_BASE_URL = BASE_URL
    settings.DEFAULT_FROM_EMAIL = FROM
    settings.OUTBOX_MAX_ATTEMPTS = 6
    # A retry waits a minute: the tests make a message due again themselves (`_due_now`).
    settings.OUTBOX_RETRY_BASE_SECONDS = 60
    settings.OUTBOX_RETRY_MAX_DELAY_SECONDS = 300


@pytest.fixture(autouse=True)
def _fresh_email_connection():
    """The email channel keeps one open connection per thread, made from the backend in
    the settings when it was opened. Drop it so each test sends through the backend its
    own settings name."""
    outbox_email._drop_connection()
    yield
    outbox_email._drop_connection()


class FlakyBackend(LocmemBackend):
    """Fails the first `failures` sends with `error()`, then delivers to the outbox.
    `keys` holds the idempotency key every attempt carried."""

    failures = 0
    error = None
    keys: list = []

    def send_messages(self, messages):
        cls = type(self)
        cls.keys.extend(m.extra_headers.get("Resend-Idempotency-Key") for m in messages)
        if cls.failures > 0:
            cls.failures -= 1
            raise cls.error()
        return super().send_messages(messages)


@pytest.fixture
def flaky(settings):
    def configure(error, failures=1):
        FlakyBackend.error = staticmethod(error)
        FlakyBackend.failures = failures
        FlakyBackend.keys = []
        settings.EMAIL_BACKEND = FLAKY_BACKEND
        outbox_email._drop_connection()  # the next send opens a FlakyBackend
        return FlakyBackend

    yield configure
    FlakyBackend.failures, FlakyBackend.error, FlakyBackend.keys = 0, None, []


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
    error = error_class("Error posting to https://api.resend.com/emails:")
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
def make_lead(tenant, agent):
    def make(*, to=None, **fields):
        return create_lead(
            tenant=tenant,
            actor=Actor.system(),
            assigned_agent_id=(to or agent).pk,
            **{**LEAD, **fields},
        )

    return make


@pytest.fixture
def reassign(tenant, owner, new_agent):
    def move(lead, *, reason, to=None, notes="", restart_window=False):
        return reassign_lead(
            tenant=tenant,
            lead_id=lead.pk,
            to_agent_id=(to or new_agent).pk,
            reason=reason,
            actor=Actor.for_membership(owner),
            reassigned_by=owner,
            notes=notes,
            restart_window=restart_window,
        )

    return move


@pytest.fixture
def outbox_log(caplog):
    caplog.set_level(logging.INFO, logger="outbox")
    return caplog


def _notice(recipient, kind) -> Notification:
    return Notification.all_tenants.select_related("email_message").get(
        recipient=recipient, kind=kind
    )


def _message(notice) -> OutboundMessage:
    assert notice.email_message_id is not None, "the notice has no email"
    return OutboundMessage.all_tenants.get(pk=notice.email_message_id)


def _due_now(message) -> None:
    """Make a message waiting for its retry due again."""
    OutboundMessage.all_tenants.filter(pk=message.pk).update(next_attempt_at=timezone.now())


def _html(email) -> str:
    [(content, mimetype)] = email.alternatives
    assert mimetype == "text/html"
    return content


def _failure_lines(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "outbox" and r.levelno == logging.WARNING
    ]


def _retry_lines(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "outbox" and r.levelno == logging.INFO and "next try at" in r.getMessage()
    ]


def _expected_failure_line(message) -> str:
    return (
        f"{FAILURE_LINE}{message.last_error} "
        f"[message {message.pk}, {message.kind}, tenantId={message.tenant_id}]"
    )


def _lead_link(lead) -> str:
    return f"{BASE_URL}/leads/{lead.pk}/"


def _admin_link(lead) -> str:
    return BASE_URL + reverse("admin:leads_lead_change", args=[lead.pk])


# --- the new agent's email after a reassignment ----------------------------------------


def test_a_reassigned_lead_emails_the_new_agent_everything_they_need(
    kolkata, agent, new_agent, make_lead, reassign, mailoutbox, deliver_outbox
):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        deliver_outbox()
    mailoutbox.clear()

    # Not claimed within 5 minutes: the admin gives it to Ben at 09:06 UTC.
    with time_machine.travel(T0 + timedelta(minutes=6), tick=False):
        reassign(lead, reason="unclaimed")
        assert deliver_outbox() == 1

    [email] = mailoutbox
    assert email.to == [new_agent.user.email]
    assert email.from_email == FROM
    assert email.subject == "Lead reassigned to you: Priya Sharma"
    body = email.body
    for value in LEAD.values():
        assert value in body
    assert "It was reassigned to you because the previous agent did not claim it in time." in body
    # A new 5-minute contact window from 09:06 UTC: 09:11 UTC is 14:41 in Kolkata.
    warning = "You have 5 minutes to contact this lead. Deadline: 2025-03-10 14:41 (Asia/Kolkata)."
    assert warning in body
    assert f"Open the lead: {_lead_link(lead)}" in body

    html = _html(email)
    assert f'href="{_lead_link(lead)}"' in html
    assert "You have 5 minutes to contact this lead" in html
    assert "2025-03-10 14:41 (Asia/Kolkata)" in html
    for value in LEAD.values():
        assert value in html

    notice = _notice(new_agent, NotificationKind.LEAD_REASSIGNED)
    message = _message(notice)
    assert notice.email_status == MessageStatus.SENT
    assert (message.channel, message.kind, message.target) == (
        "email",
        "lead.lead_reassigned",
        new_agent.user.email,
    )
    assert message.payload["renderer"] == "leads.notification"
    assert message.payload["notification_id"] == str(notice.pk)
    # What was sent is kept, so that a retry sends the very same email.
    assert message.payload["rendered"]["subject"] == email.subject
    assert message.idempotency_key == f"lead-notification/{notice.pk}"
    assert message.attempts == 1
    assert message.last_error == ""
    assert message.finished_at == T0 + timedelta(minutes=6)
    # What the provider gets along: the key it deduplicates on, and what the email is.
    assert email.extra_headers["Resend-Idempotency-Key"] == message.idempotency_key
    assert email.metadata == {
        "message_id": str(message.pk),
        "notification_id": str(notice.pk),
        "tenant_id": str(kolkata.pk),
        "kind": "lead_reassigned",
    }


def test_a_lead_not_contacted_in_time_warns_about_the_reset_contact_window(
    kolkata, agent, new_agent, make_lead, reassign, mailoutbox, deliver_outbox
):
    kolkata.contact_window_minutes = 10
    kolkata.save(update_fields=["contact_window_minutes"])
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        claim_lead(tenant=kolkata, lead_id=lead.pk, agent=agent)
        deliver_outbox()
    mailoutbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=12), tick=False):
        reassign(lead, reason="no_contact")
        deliver_outbox()

    [email] = mailoutbox
    assert email.to == [new_agent.user.email]
    assert "because the previous agent did not contact the lead in time." in email.body
    # The reset window: 09:12 + 10 minutes = 09:22 UTC = 14:52 in Kolkata.
    warning = "You have 10 minutes to contact this lead. Deadline: 2025-03-10 14:52 (Asia/Kolkata)."
    assert warning in email.body
    assert "You have 10 minutes to contact this lead" in _html(email)


def test_a_manual_reassignment_names_the_admin_and_has_no_timer_warning(
    owner, new_agent, make_lead, reassign, mailoutbox, deliver_outbox
):
    lead = make_lead()
    deliver_outbox()
    mailoutbox.clear()

    reassign(lead, reason="manual", notes="She prefers Hindi.")
    deliver_outbox()

    [email] = mailoutbox
    assert email.to == [new_agent.user.email]
    assert email.subject == "Lead reassigned to you: Priya Sharma"
    assert f"{owner.display_name} (admin) reassigned it to you." in email.body
    assert "Note: She prefers Hindi." in email.body
    assert "Note: She prefers Hindi." in _html(email)
    assert "minutes to" not in email.body
    assert "Deadline" not in email.body
    assert "minutes to" not in _html(email)
    assert _lead_link(lead) in email.body


def test_a_manual_reassignment_after_the_deadline_tells_the_new_agent_first_thing(
    kolkata, owner, agent, new_agent, make_lead, reassign, mailoutbox, deliver_outbox
):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        claim_lead(tenant=kolkata, lead_id=lead.pk, agent=agent)  # contact by 09:05 UTC
        deliver_outbox()
    mailoutbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=20), tick=False):
        reassign(lead, reason="manual")
        assert deliver_outbox() == 1

    [email] = mailoutbox
    assert email.subject == "Overdue lead reassigned to you: Priya Sharma"
    # 09:05 UTC is 14:35 in Kolkata. Right under the greeting, before anything else.
    assert email.body.startswith(
        f"Hi {new_agent.user.get_short_name()},\n\n"
        "IMPORTANT: The contact deadline had already passed when this lead was reassigned "
        "to you: it is late, contact it as soon as you can. "
        "The deadline was 2025-03-10 14:35 (Asia/Kolkata).\n"
    )
    assert f"{owner.display_name} (admin) reassigned it to you." in email.body
    assert "minutes to" not in email.body, "no fresh window to promise"
    html = _html(email)
    assert "An overdue lead has been reassigned to you" in html
    urgent = html.index("The contact deadline had already passed")
    assert urgent < html.index("(admin) reassigned it to you"), "the warning comes first"
    assert urgent < html.index(LEAD["phone"])
    assert "border-left:4px solid #b42318" in html
    assert "The deadline was <strong>2025-03-10 14:35 (Asia/Kolkata)</strong>" in html


def test_a_restarted_window_gives_the_new_agent_the_new_deadline(
    kolkata, owner, agent, new_agent, make_lead, reassign, mailoutbox, deliver_outbox
):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        claim_lead(tenant=kolkata, lead_id=lead.pk, agent=agent)
        deliver_outbox()
    mailoutbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=20), tick=False):
        reassign(lead, reason="manual", restart_window=True)
        assert deliver_outbox() == 1

    [email] = mailoutbox
    assert email.subject == "Lead reassigned to you: Priya Sharma"
    # Restarted at 09:20 UTC: 5 minutes, until 09:25 UTC = 14:55 in Kolkata.
    assert (
        "The contact window was restarted when this lead was reassigned to you: you have "
        "5 minutes to contact it. Deadline: 2025-03-10 14:55 (Asia/Kolkata)." in email.body
    )
    assert "already passed" not in email.body
    html = _html(email)
    assert "The contact window was restarted" in html
    assert "Deadline: <strong>2025-03-10 14:55 (Asia/Kolkata)</strong>" in html
    assert "#b42318" not in html


def test_an_overdue_lead_claimed_before_the_email_went_out_is_no_longer_overdue(
    kolkata, agent, new_agent, make_lead, reassign, mailoutbox, deliver_outbox
):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()  # claim by 09:05 UTC
        deliver_outbox()
    mailoutbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=20), tick=False):
        reassign(lead, reason="manual")
        claim_lead(tenant=kolkata, lead_id=lead.pk, agent=new_agent)  # before the worker ran
        deliver_outbox()

    [email] = mailoutbox
    assert email.subject == "Lead reassigned to you: Priya Sharma"
    assert "already passed" not in email.body
    assert "restarted" not in email.body


# --- the agent's email for a new lead --------------------------------------------------


def test_a_new_lead_emails_its_agent_the_claim_deadline(
    kolkata, agent, make_lead, mailoutbox, deliver_outbox
):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        assert deliver_outbox() == 1

    [email] = mailoutbox
    assert email.to == [agent.user.email]
    assert email.subject == "New lead for you: Priya Sharma"
    for value in LEAD.values():
        assert value in email.body
    warning = "You have 5 minutes to claim this lead. Deadline: 2025-03-10 14:35 (Asia/Kolkata)."
    assert warning in email.body
    assert f"Open the lead: {_lead_link(lead)}" in email.body
    assert f'href="{_lead_link(lead)}"' in _html(email)
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    message = _message(notice)
    assert notice.email_status == MessageStatus.SENT
    assert message.kind == "lead.lead_assigned"
    assert message.finished_at == T0


def test_lead_details_are_escaped_in_html_and_plain_in_text(make_lead, mailoutbox, deliver_outbox):
    make_lead(name='<b>Bob & "Sons"</b>', source="<script>x</script>")
    deliver_outbox()

    [email] = mailoutbox
    assert email.subject == 'New lead for you: <b>Bob & "Sons"</b>'
    assert '<b>Bob & "Sons"</b>' in email.body
    html = _html(email)
    assert "&lt;b&gt;Bob &amp; &quot;Sons&quot;&lt;/b&gt;" in html
    assert "<b>Bob" not in html
    assert "<script>" not in html


def test_missing_contact_details_read_not_given(make_lead, mailoutbox, deliver_outbox):
    make_lead(email="", source="")
    deliver_outbox()

    [email] = mailoutbox
    assert "Email:  not given" in email.body
    assert "Source: not given" in email.body


def test_the_email_tells_the_lead_as_it_is_when_it_is_sent(
    kolkata, agent, make_lead, mailoutbox, deliver_outbox
):
    # Claimed before the worker got to the email: no claim warning any more.
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        claim_lead(tenant=kolkata, lead_id=lead.pk, agent=agent)
        deliver_outbox()

    [email] = mailoutbox
    assert email.subject == "New lead for you: Priya Sharma"
    assert "to claim this lead" not in email.body
    assert "Deadline" not in email.body


# --- admins' emails on a breach --------------------------------------------------------


def test_a_missed_claim_window_emails_every_active_admin_of_the_tenant_only(
    kolkata, owner, teammate, outsider, agent, make_lead, mailoutbox, deliver_outbox
):
    super_admin = MembershipFactory(tenant=kolkata, role=Role.SUPER_ADMIN)
    MembershipFactory(tenant=kolkata, role=Role.ADMIN, is_active=False)
    MembershipFactory(tenant=kolkata, role=Role.ADMIN, user__is_active=False)
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        deliver_outbox()
    mailoutbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=6), tick=False):
        sweep_sla_breaches()
        assert mailoutbox == [], "nothing is sent by the sweep itself"
        assert deliver_outbox() == 2

    assert sorted(m.to[0] for m in mailoutbox) == sorted([owner.user.email, super_admin.user.email])
    email = mailoutbox[0]
    assert email.subject == "Lead not claimed in time: Priya Sharma"
    assert "Priya Sharma was not claimed in time." in email.body
    assert (
        f"Asha Rao ({agent.user.email}) missed the claim window, which ended at "
        "2025-03-10 14:35 (Asia/Kolkata)." in email.body
    )
    assert "Reassign it to another agent from the admin." in email.body
    assert f"Open the lead in the admin: {_admin_link(lead)}" in email.body
    assert f'href="{_admin_link(lead)}"' in _html(email)
    notices = Notification.all_tenants.filter(kind=NotificationKind.CLAIM_SLA_BREACHED)
    assert notices.count() == 2
    for notice in notices:
        message = _message(notice)
        assert message.status == MessageStatus.SENT
        assert message.kind == "lead.claim_sla_breached"
        assert message.target == notice.recipient.user.email
        # One email per admin per missed deadline, whoever queues it.
        assert message.idempotency_key == (
            f"lead-notification/{notice.recipient_id}/{notice.dedupe_key}"
        )


def test_a_missed_contact_window_emails_the_admins(
    kolkata, owner, agent, make_lead, mailoutbox, deliver_outbox
):
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
    with time_machine.travel(T0 + timedelta(minutes=1), tick=False):
        claim_lead(tenant=kolkata, lead_id=lead.pk, agent=agent)
        deliver_outbox()
    mailoutbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=7), tick=False):
        sweep_sla_breaches()
        deliver_outbox()

    [email] = mailoutbox
    assert email.to == [owner.user.email]
    assert email.subject == "Lead not contacted in time: Priya Sharma"
    assert "Priya Sharma was not contacted in time." in email.body
    assert (
        f"Asha Rao ({agent.user.email}) missed the contact window, which ended at "
        "2025-03-10 14:36 (Asia/Kolkata)." in email.body
    )
    assert f'href="{_admin_link(lead)}"' in _html(email)
    notice = _notice(owner, NotificationKind.CONTACT_SLA_BREACHED)
    assert notice.email_status == MessageStatus.SENT


def test_after_an_automatic_reassignment_admins_learn_who_missed_and_who_has_it_now(
    kolkata, owner, agent, new_agent, make_lead, mailoutbox, deliver_outbox
):
    kolkata.auto_reassign_on_breach = True
    kolkata.save(update_fields=["auto_reassign_on_breach"])
    with time_machine.travel(T0, tick=False):
        lead = make_lead()
        deliver_outbox()
    mailoutbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=6), tick=False):
        sweep_sla_breaches()
        deliver_outbox()

    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent == new_agent
    by_recipient = {m.to[0]: m for m in mailoutbox}
    assert len(mailoutbox) == 2
    assert set(by_recipient) == {owner.user.email, new_agent.user.email}
    to_admin = by_recipient[owner.user.email].body
    assert (
        f"Asha Rao ({agent.user.email}) missed the claim window, which ended at "
        "2025-03-10 14:35 (Asia/Kolkata)." in to_admin
    )
    assert "The lead has since been reassigned to Ben Okafor." in to_admin
    assert "Reassign it to another agent" not in to_admin
    to_agent = by_recipient[new_agent.user.email].body
    assert "did not claim it in time" in to_agent
    warning = "You have 5 minutes to contact this lead. Deadline: 2025-03-10 14:41 (Asia/Kolkata)."
    assert warning in to_agent


# --- who no longer needs the email -----------------------------------------------------


@pytest.mark.parametrize("how", ["membership", "user"])
def test_an_admin_deactivated_before_the_email_went_out_is_skipped(
    tenant, owner, make_lead, mailoutbox, deliver_outbox, outbox_log, how
):
    other_admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)
    lead = make_lead()
    deliver_outbox()
    mailoutbox.clear()
    with time_machine.travel(lead.claim_deadline + timedelta(seconds=1)):
        sweep_sla_breaches()
        if how == "membership":
            Membership.all_tenants.filter(pk=owner.pk).update(is_active=False)
        else:
            User.objects.filter(pk=owner.user_id).update(is_active=False)

        assert deliver_outbox() == 2

    assert [m.to for m in mailoutbox] == [[other_admin.user.email]]
    skipped = _message(_notice(owner, NotificationKind.CLAIM_SLA_BREACHED))
    assert skipped.status == MessageStatus.SKIPPED
    assert skipped.last_error == "The recipient is no longer an active agent of the tenant."
    assert skipped.finished_at is not None
    assert _failure_lines(outbox_log) == [], "a skipped email is no failure"


def test_an_agent_whose_lead_moved_on_before_the_email_went_out_gets_none(
    agent, new_agent, make_lead, reassign, mailoutbox, deliver_outbox
):
    lead = make_lead()
    reassign(lead, reason="manual")

    assert deliver_outbox() == 2

    assert [m.to for m in mailoutbox] == [[new_agent.user.email]]
    skipped = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    assert skipped.email_status == MessageStatus.SKIPPED
    assert _message(skipped).last_error == "The lead has since been given to another agent."


def test_an_agent_whose_lead_was_closed_before_the_email_went_out_gets_none(
    tenant, agent, make_lead, mailoutbox, deliver_outbox
):
    lead = make_lead()
    close_lead(tenant=tenant, lead_id=lead.pk, actor=Actor.system())

    assert deliver_outbox() == 1

    assert mailoutbox == []
    skipped = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))
    assert skipped.status == MessageStatus.SKIPPED
    assert skipped.last_error == "The lead has been closed since."


def test_the_email_of_a_deleted_notice_is_skipped(tenant, mailoutbox, deliver_outbox):
    notice = NotificationFactory(tenant=tenant)
    message = _message(notice)
    notice.delete()

    assert deliver_outbox() == 1

    assert mailoutbox == []
    message.refresh_from_db()
    assert message.status == MessageStatus.SKIPPED
    assert message.last_error == "The notification no longer exists."


def test_a_notice_without_an_email_reads_skipped_and_sends_nothing(
    tenant, mailoutbox, deliver_outbox
):
    silent = NotificationFactory(tenant=tenant, email=False)
    queued = NotificationFactory(tenant=tenant)
    assert silent.email_message_id is None
    assert silent.email_status == "skipped"
    assert queued.email_status == MessageStatus.PENDING

    assert deliver_outbox() == 1

    assert [m.to for m in mailoutbox] == [[queued.recipient.user.email]]
    assert Notification.all_tenants.get(pk=queued.pk).email_status == MessageStatus.SENT


# --- failures and retries --------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        (resend_error(503, "Resend is busy"), "Resend API response 503"),
        (resend_error(500), "Resend API response 500"),
        (resend_error(429, "Too many requests"), "Resend API response 429"),
        (resend_unreachable, "Error posting to https://api.resend.com/emails"),
        (lambda: requests.ConnectionError("Connection reset by peer"), "Connection reset"),
        (lambda: requests.ReadTimeout("Read timed out"), "ReadTimeout: Read timed out"),
        (lambda: TimeoutError("timed out"), "TimeoutError: timed out"),
        (
            lambda: smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
            "SMTPServerDisconnected: Connection unexpectedly closed",
        ),
        (
            lambda: smtplib.SMTPResponseException(421, b"Service not available, try later"),
            "421",
        ),
        (
            lambda: smtplib.SMTPRecipientsRefused({"x@y.test": (450, b"Mailbox busy")}),
            "SMTPRecipientsRefused",
        ),
    ],
    ids=[
        "503",
        "500",
        "429",
        "unreachable",
        "connection",
        "timeout",
        "socket",
        "smtp",
        "smtp421",
        "smtp-busy",
    ],
)
def test_a_transient_failure_is_retried_later_with_the_same_idempotency_key(
    flaky, agent, make_lead, mailoutbox, deliver_outbox, outbox_log, error, stored
):
    backend = flaky(error, failures=1)
    make_lead()
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)

    assert deliver_outbox() == 1

    message = _message(notice)
    assert message.status == MessageStatus.PENDING, "waits for its retry"
    assert message.attempts == 1
    assert stored in message.last_error
    assert message.next_attempt_at > timezone.now()
    assert mailoutbox == []
    [retry_line] = _retry_lines(outbox_log)
    assert "attempt 1 of 6" in retry_line
    assert stored in retry_line
    assert _failure_lines(outbox_log) == [], "not a failure while attempts remain"
    assert deliver_outbox() == 0, "not before its backoff is over"

    _due_now(message)
    assert deliver_outbox() == 1

    [email] = mailoutbox
    assert email.to == [agent.user.email]
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.attempts == 2
    assert message.last_error == ""  # cleared once sent
    assert message.finished_at is not None
    assert backend.keys == [message.idempotency_key] * 2
    assert _failure_lines(outbox_log) == []


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        (resend_error(400, "Invalid `to` field"), "Resend API response 400"),
        (resend_error(422, "The domain is not verified"), "The domain is not verified"),
        (resend_error(401, "API key is invalid"), "Resend API response 401"),
        (lambda: AnymailRecipientsRefused(), "All message recipients were rejected"),
        (
            lambda: smtplib.SMTPRecipientsRefused({"x@y.test": (550, b"No such user")}),
            "SMTPRecipientsRefused",
        ),
        (lambda: smtplib.SMTPAuthenticationError(535, b"Bad credentials"), "535"),
        (lambda: RuntimeError("boom"), "RuntimeError: boom"),
    ],
    ids=["400", "422", "401", "refused", "smtp-refused", "smtp-auth", "bug"],
)
def test_a_permanent_failure_fails_at_once_without_retrying(
    flaky, agent, make_lead, mailoutbox, deliver_outbox, outbox_log, error, stored
):
    backend = flaky(error, failures=float("inf"))
    make_lead()

    assert deliver_outbox() == 1

    assert len(backend.keys) == 1
    assert mailoutbox == []
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    message = _message(notice)
    assert notice.email_status == MessageStatus.FAILED
    assert message.attempts == 1
    assert stored in message.last_error
    assert "Gave up" not in message.last_error
    assert message.finished_at is not None
    assert _retry_lines(outbox_log) == []
    assert _failure_lines(outbox_log) == [_expected_failure_line(message)]
    assert message.kind in _failure_lines(outbox_log)[0]

    _due_now(message)  # even when due again, a failed email is not tried again
    assert deliver_outbox() == 0
    assert len(backend.keys) == 1
    assert len(_failure_lines(outbox_log)) == 1


def test_after_the_last_attempt_the_email_fails_with_the_last_error_and_one_log_line(
    flaky, settings, agent, make_lead, mailoutbox, deliver_outbox, outbox_log
):
    settings.OUTBOX_MAX_ATTEMPTS = 3
    backend = flaky(resend_error(503, "Resend is down"), failures=float("inf"))
    make_lead()
    message = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))

    for _ in range(3):
        assert deliver_outbox() == 1
        _due_now(message)
    assert deliver_outbox() == 0, "nothing left to try"

    assert len(backend.keys) == 3
    assert set(backend.keys) == {message.idempotency_key}
    assert mailoutbox == []
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.attempts == 3
    assert "Resend API response 503" in message.last_error
    assert "Resend is down" in message.last_error
    assert message.last_error.endswith("Gave up after 3 attempts.")
    assert len(_retry_lines(outbox_log)) == 2  # attempts 1 and 2
    assert _failure_lines(outbox_log) == [_expected_failure_line(message)]


def test_a_failing_email_leaves_the_reassignment_committed(
    flaky, tenant, agent, new_agent, make_lead, reassign, mailoutbox, deliver_outbox
):
    lead = make_lead()
    deliver_outbox()
    flaky(resend_error(400), failures=float("inf"))

    result = reassign(lead, reason="manual")
    deliver_outbox()

    lead = Lead.all_tenants.get(pk=lead.pk)
    assert lead.assigned_agent == new_agent
    assert lead.previous_agent == agent
    assert lead.reassignment_count == 1
    assert LeadReassignment.objects.for_tenant(tenant).get().pk == result.reassignment.pk
    assert Membership.all_tenants.get(pk=new_agent.pk).current_lead_count == 1
    assert Membership.all_tenants.get(pk=agent.pk).current_lead_count == 0
    notice = _notice(new_agent, NotificationKind.LEAD_REASSIGNED)
    assert notice.email_status == MessageStatus.FAILED
    assert notice.is_read is False, "the in-app notice is still there"


def test_an_email_failure_never_changes_the_lead(
    flaky, agent, make_lead, mailoutbox, deliver_outbox
):
    flaky(resend_error(400), failures=float("inf"))
    lead = make_lead()
    before = Lead.all_tenants.filter(pk=lead.pk).values().get()

    deliver_outbox()

    assert _notice(agent, NotificationKind.LEAD_ASSIGNED).email_status == MessageStatus.FAILED
    assert Lead.all_tenants.filter(pk=lead.pk).values().get() == before


def test_one_failing_email_does_not_stop_the_others_of_the_same_batch(
    flaky, tenant, owner, make_lead, mailoutbox, deliver_outbox
):
    MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN)
    lead = make_lead()
    deliver_outbox()
    mailoutbox.clear()
    # An error nobody planned for: permanent, for the first email of the batch only.
    backend = flaky(lambda: RuntimeError("boom"), failures=1)

    with time_machine.travel(lead.claim_deadline + timedelta(seconds=1)):
        sweep_sla_breaches()
        assert deliver_outbox() == 2

    assert len(backend.keys) == 2
    notices = list(Notification.all_tenants.filter(kind=NotificationKind.CLAIM_SLA_BREACHED))
    by_status = {n.email_status: n for n in notices}
    assert sorted(by_status) == [MessageStatus.FAILED, MessageStatus.SENT]
    failed = _message(by_status[MessageStatus.FAILED])
    assert failed.last_error == "RuntimeError: boom"
    assert failed.attempts == 1
    [email] = mailoutbox
    assert email.to == [by_status[MessageStatus.SENT].recipient.user.email]


def test_a_recipient_without_an_email_address_fails_without_sending(
    flaky, tenant, make_lead, mailoutbox, deliver_outbox, outbox_log
):
    backend = flaky(resend_error(400), failures=0)
    nobody = MembershipFactory(tenant=tenant, user=UserFactory(email=""))
    make_lead(to=nobody)

    deliver_outbox()

    assert backend.keys == [], "the mail service was never asked"
    assert mailoutbox == []
    message = _message(_notice(nobody, NotificationKind.LEAD_ASSIGNED))
    assert message.status == MessageStatus.FAILED
    assert message.attempts == 1
    assert message.last_error == "The recipient has no email address."
    assert _failure_lines(outbox_log) == [_expected_failure_line(message)]


# --- through the production Resend backend ---------------------------------------------


@pytest.fixture
def resend(settings, httpserver):
    """The backend production uses with RESEND_API_KEY set, against a local Resend."""
    settings.EMAIL_BACKEND = "outbox.email_backends.ResendEmailBackend"
    settings.RESEND_API_KEY = RESEND_KEY
    settings.ANYMAIL = {
        "RESEND_API_KEY": RESEND_KEY,
        "RESEND_API_URL": httpserver.url_for("/"),
        "REQUESTS_TIMEOUT": (2, 2),
    }
    return httpserver


def _resend_answer(resend, status=200, **json_body):
    resend.expect_ordered_request("/emails", method="POST").respond_with_json(
        json_body, status=status
    )


def _requests(resend) -> list:
    return [request for request, _ in resend.log]


def test_the_resend_api_gets_the_email_with_its_idempotency_key_and_metadata(
    resend, agent, make_lead, deliver_outbox
):
    _resend_answer(resend, id="re_msg_1")
    lead = make_lead()
    notice = _notice(agent, NotificationKind.LEAD_ASSIGNED)
    message = _message(notice)

    assert deliver_outbox() == 1

    [request] = _requests(resend)
    assert request.headers["Authorization"] == f"Bearer {RESEND_KEY}"
    assert request.headers["Idempotency-Key"] == message.idempotency_key
    assert message.idempotency_key == f"lead-notification/{notice.pk}"
    sent = request.get_json()
    assert sent["from"] == FROM
    assert sent["to"] == [agent.user.email]
    assert sent["subject"] == "New lead for you: Priya Sharma"
    assert _lead_link(lead) in sent["text"]
    assert f'href="{_lead_link(lead)}"' in sent["html"]
    assert sent["headers"]["Resend-Idempotency-Key"] == message.idempotency_key
    assert json.loads(sent["headers"]["X-Metadata"]) == {
        "message_id": str(message.pk),
        "notification_id": str(notice.pk),
        "tenant_id": str(lead.tenant_id),
        "kind": "lead_assigned",
    }
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == "re_msg_1"


@pytest.mark.parametrize("status", [503, 500, 429])
def test_a_resend_outage_is_retried_with_the_same_idempotency_key(
    resend, agent, make_lead, mailoutbox, deliver_outbox, status
):
    _resend_answer(resend, status=status, statusCode=status, message="busy")
    _resend_answer(resend, id="re_msg_2")
    make_lead()
    message = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))

    assert deliver_outbox() == 1
    message.refresh_from_db()
    assert message.status == MessageStatus.PENDING
    assert f"Resend API response {status}" in message.last_error
    assert len(_requests(resend)) == 1

    _due_now(message)
    assert deliver_outbox() == 1

    first, second = _requests(resend)
    assert first.headers["Idempotency-Key"] == message.idempotency_key
    assert second.headers["Idempotency-Key"] == message.idempotency_key
    assert first.get_json() == second.get_json(), "the same email, sent again"
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.attempts == 2
    assert message.provider_message_id == "re_msg_2"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("how", ["connection refused", "read timeout"])
def test_resend_unreachable_or_silent_is_retried(
    resend, settings, agent, make_lead, deliver_outbox, how
):
    if how == "connection refused":
        settings.ANYMAIL = {**settings.ANYMAIL, "RESEND_API_URL": _closed_port_url()}
    else:
        settings.ANYMAIL = {**settings.ANYMAIL, "REQUESTS_TIMEOUT": (2, 0.3)}

        def too_slow(request):
            time.sleep(0.8)
            return Response(json.dumps({"id": "too-late"}), content_type="application/json")

        resend.expect_ordered_request("/emails", method="POST").respond_with_handler(too_slow)
    _resend_answer(resend, id="re_msg_3")
    make_lead()
    message = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))

    assert deliver_outbox() == 1
    message.refresh_from_db()
    assert message.status == MessageStatus.PENDING
    assert message.attempts == 1
    assert message.last_error.startswith("AnymailRequestsAPIError")

    # Resend is back (the failed attempt dropped the connection: the retry opens a new
    # one, with these settings).
    settings.ANYMAIL = {
        **settings.ANYMAIL,
        "RESEND_API_URL": resend.url_for("/"),
        "REQUESTS_TIMEOUT": (2, 2),
    }
    _due_now(message)
    assert deliver_outbox() == 1

    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.attempts == 2
    assert _requests(resend)[-1].headers["Idempotency-Key"] == message.idempotency_key


@pytest.mark.parametrize("status", [400, 401, 403, 422])
def test_resend_refusals_fail_at_once_and_never_show_the_api_key(
    resend, tenant, agent, make_lead, deliver_outbox, outbox_log, status
):
    # A careless error message that quotes the key back.
    _resend_answer(resend, status=status, message=f"API key {RESEND_KEY} cannot send this")
    make_lead()
    message = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))

    assert deliver_outbox() == 1

    assert len(_requests(resend)) == 1
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.attempts == 1
    assert f"Resend API response {status}" in message.last_error
    assert "[redacted]" in message.last_error
    assert RESEND_KEY not in message.last_error
    assert _failure_lines(outbox_log) == [_expected_failure_line(message)]
    assert RESEND_KEY not in outbox_log.text
    [audit] = ActivityLog.objects.for_tenant(tenant).filter(action="message.failed")
    assert RESEND_KEY not in json.dumps(audit.data)


def test_a_resend_outage_never_shows_the_api_key_in_retries_either(
    resend, settings, tenant, agent, make_lead, deliver_outbox, outbox_log
):
    settings.OUTBOX_MAX_ATTEMPTS = 2
    for _ in range(2):
        _resend_answer(resend, status=503, message=f"Key {RESEND_KEY} is over its quota")
    make_lead()
    message = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))

    deliver_outbox()
    _due_now(message)
    deliver_outbox()

    assert len(_requests(resend)) == 2
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.last_error.endswith("Gave up after 2 attempts.")
    assert "[redacted]" in message.last_error
    assert RESEND_KEY not in message.last_error
    [retry_line] = _retry_lines(outbox_log)
    assert "[redacted]" in retry_line
    assert _failure_lines(outbox_log) == [_expected_failure_line(message)]
    assert RESEND_KEY not in outbox_log.text


# --- after the change, and only once ---------------------------------------------------


def test_nothing_is_sent_inside_the_transaction_of_the_change(
    agent, make_lead, mailoutbox, deliver_outbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        make_lead()

    assert mailoutbox == [], "even once the change is committed, the worker sends it"
    message = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))
    assert message.status == MessageStatus.PENDING
    assert message.attempts == 0
    assert message.last_attempt_at is None

    assert deliver_outbox() == 1
    assert [m.to for m in mailoutbox] == [[agent.user.email]]


def test_a_change_rolled_back_leaves_no_email(tenant, agent, make_lead, mailoutbox, deliver_outbox):
    with pytest.raises(RuntimeError), transaction.atomic():
        make_lead()
        assert OutboundMessage.all_tenants.count() == 1
        raise RuntimeError("the request failed after the lead was made")

    assert OutboundMessage.all_tenants.count() == 0
    assert deliver_outbox() == 0
    assert mailoutbox == []


def test_an_email_is_sent_once_even_if_delivery_runs_again(
    agent, make_lead, mailoutbox, deliver_outbox
):
    make_lead()
    message = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))

    assert deliver_outbox() == 1
    assert deliver_outbox() == 0
    _due_now(message)  # a sent message is final, whatever its next_attempt_at says
    assert deliver_outbox() == 0

    assert len(mailoutbox) == 1
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.attempts == 1


class DeliverWhileSendingBackend(LocmemBackend):
    """While it sends, another delivery run looks for due messages (a second worker
    racing the first)."""

    concurrent_runs: list = []

    def send_messages(self, messages):
        type(self).concurrent_runs.append(deliver_due(limit=100))
        return super().send_messages(messages)


def test_another_delivery_run_does_not_send_an_email_already_in_flight(
    settings, agent, make_lead, mailoutbox, deliver_outbox
):
    settings.EMAIL_BACKEND = "tests.leads.test_emails.DeliverWhileSendingBackend"
    DeliverWhileSendingBackend.concurrent_runs = []
    make_lead()

    assert deliver_outbox() == 1

    assert DeliverWhileSendingBackend.concurrent_runs == [0]
    assert len(mailoutbox) == 1
    message = _message(_notice(agent, NotificationKind.LEAD_ASSIGNED))
    assert message.status == MessageStatus.SENT
    assert message.attempts == 1
