"""POST /api/v1/reassign-lead and the one service behind it.

The end-to-end checks (the request, the email, the history), each reason's timer changes
at pinned times, every error code, both ways in (admin session, API key +
reassigned_by_id), and "a database failure → 500 with nothing half-written" with a real
failing INSERT.
"""

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from rest_framework.test import APIClient

from audit.models import ActivityLog
from core.actor import Actor
from leads.formatting import lead_url
from leads.models import (
    Lead,
    LeadReassignment,
    LeadStatus,
    Notification,
    NotificationKind,
)
from leads.services import create_lead, reassign_lead, sweep_sla_breaches
from outbox.models import OutboundMessage
from teams.models import Membership, Role, Strategy
from tests.factories import AssignmentConfigFactory, MembershipFactory

URL = "/api/v1/reassign-lead"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

pytestmark = pytest.mark.django_db


# --- helpers and fixtures --------------------------------------------------------------


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def parse_dt(value: str | None):
    return datetime.fromisoformat(value) if value is not None else None


def new_lead(tenant, agent=None, **fields) -> Lead:
    """A lead as intake makes it: assigned to `agent` (claim window running) or routed."""
    values = {
        "name": "Jane Roe",
        "phone": "+4915112345678",
        "email": "jane@example.test",
        "source": "website",
        **fields,
    }
    return create_lead(
        tenant=tenant,
        actor=Actor.system(),
        assigned_agent_id=agent.pk if agent is not None else None,
        **values,
    )


def body_for(lead, to_agent, reason="unclaimed", by=None, notes="Test reassignment", **extra):
    """A reassign-lead request body."""
    body = {
        "lead_id": str(lead.pk),
        "to_agent_id": str(to_agent.pk),
        "reason": reason,
        "notes": notes,
    }
    if by is not None:
        body["reassigned_by_id"] = str(by.pk)
    body.update(extra)
    return body


def post(client, body):
    return client.post(URL, body, format="json")


def error(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content
    return response.json()["error"]


def counter(agent: Membership) -> int:
    return Membership.all_tenants.values_list("current_lead_count", flat=True).get(pk=agent.pk)


def history(tenant, lead):
    return list(
        LeadReassignment.objects.for_tenant(tenant).filter(lead=lead).order_by("created_at")
    )


def lead_row(lead) -> dict:
    """Every stored column of a lead, to prove a refusal changed nothing."""
    return Lead.all_tenants.filter(pk=lead.pk).values().get()


def unread(agent, lead=None):
    notices = Notification.all_tenants.filter(recipient=agent, is_read=False)
    return notices.filter(lead=lead) if lead is not None else notices


@pytest.fixture
def clock():
    """Now is pinned to T0 (2026-11-23 10:00 UTC) and only moves when a test moves it."""
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def alice(teammate):
    """The agent the lead is assigned to first."""
    return teammate


@pytest.fixture
def bob(tenant):
    """The agent the lead is reassigned to."""
    return MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Bob Builder")


@pytest.fixture
def lead(tenant, alice, clock):
    """Assigned to Alice at T0: claim deadline T0 + 5 min."""
    return new_lead(tenant, alice)


@pytest.fixture
def admin_session(owner):
    """The tenant admin, logged in (DRF skips its CSRF check for test clients)."""
    client = APIClient()
    client.force_login(owner.user)
    return client


# --- end to end: request, email, history ----------------------------------------------


def test_seed_verification_steps_via_the_api_key(
    tenant, tenant_client, api_key, owner, alice, bob, lead, clock
):
    clock.move_to(T0 + minutes(7))  # Alice missed the claim window (T0 + 5)
    now = T0 + minutes(7)

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True
    assert set(body) == {"success", "lead", "reassignment", "warning"}
    # The claim deadline had passed, but "unclaimed" starts a contact window: no warning.
    assert body["warning"] is None
    lead.refresh_from_db()
    # Lead assigned_agent_id updated
    assert lead.assigned_agent_id == bob.pk
    assert lead.assigned_at == now
    # previous_agent_id set correctly
    assert lead.previous_agent_id == alice.pk
    # reassignment_count incremented; reason and time recorded
    assert lead.reassignment_count == 1
    assert lead.reassignment_reason == "unclaimed"
    assert lead.reassigned_at == now
    # Timer fields updated based on reason (unclaimed)
    assert lead.status == LeadStatus.CLAIMED
    assert lead.claimed_at == now
    assert lead.claim_deadline is None
    assert lead.contact_deadline == now + minutes(5)
    # Record in crm_lead_reassignments
    [row] = history(tenant, lead)
    assert (row.from_agent_id, row.to_agent_id, row.reassigned_by_id) == (
        alice.pk,
        bob.pk,
        owner.pk,
    )
    assert (row.reason, row.stage, row.notes) == ("unclaimed", "claim", "Test reassignment")
    assert row.created_at == now
    # Counters moved: old agent -1, new agent +1
    assert (counter(alice), counter(bob)) == (0, 1)
    # Activity logged
    [activity] = ActivityLog.objects.for_tenant(tenant).filter(action="lead.reassigned")
    assert activity.actor_id == owner.pk
    assert (activity.actor_label, activity.via) == (
        owner.user.email,
        f"api_key:{api_key[0].prefix}",
    )
    assert activity.target_id == str(lead.pk)
    assert activity.data == {
        "from_agent_id": str(alice.pk),
        "to_agent_id": str(bob.pk),
        "reason": "unclaimed",
        "stage": "claim",
        "notes": "Test reassignment",
        "reassignment_id": str(row.pk),
        "window": "contact",
        "previous_deadline": (T0 + minutes(5)).isoformat(),
        "deadline": (now + minutes(5)).isoformat(),
        "deadline_passed": True,
        "window_restarted": True,
    }
    # The new agent is told (in-app; the email is covered below)
    [notice] = unread(bob, lead)
    assert notice.kind == NotificationKind.LEAD_REASSIGNED
    assert notice.email_status == "pending"


def test_the_response_has_the_lead_and_the_reassignment(
    tenant_client, owner, alice, bob, lead, clock
):
    clock.move_to(T0 + minutes(7))
    now = T0 + minutes(7)

    body = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner, notes="Alice is off"))
    body = body.json()

    out = body["lead"]
    assert out["id"] == str(lead.pk)
    assert out["name"] == "Jane Roe"
    assert out["status"] == "claimed"
    assert out["assigned_agent"] == {
        "id": str(bob.pk),
        "name": "Bob Builder",
        "email": bob.user.email,
    }
    assert out["previous_agent_id"] == str(alice.pk)
    assert out["reassignment_count"] == 1
    assert out["reassignment_reason"] == "unclaimed"
    assert parse_dt(out["reassigned_at"]) == now
    assert parse_dt(out["claimed_at"]) == now
    assert out["claim_deadline"] is None
    assert parse_dt(out["contact_deadline"]) == now + minutes(5)
    assert out["url"] == lead_url(lead)
    reassignment = body["reassignment"]
    assert reassignment["lead_id"] == str(lead.pk)
    assert reassignment["from_agent_id"] == str(alice.pk)
    assert reassignment["to_agent_id"] == str(bob.pk)
    assert reassignment["reassigned_by_id"] == str(owner.pk)
    assert reassignment["reason"] == "unclaimed"
    assert reassignment["stage"] == "claim"
    assert reassignment["notes"] == "Alice is off"
    assert parse_dt(reassignment["created_at"]) == now
    assert reassignment["id"] == str(LeadReassignment.all_tenants.get().pk)


def test_the_new_agents_email_waits_in_the_outbox_until_after_the_request(
    tenant_client,
    owner,
    alice,
    bob,
    lead,
    clock,
    django_capture_on_commit_callbacks,
    mailoutbox,
    deliver_outbox,
):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(tenant_client, body_for(lead, bob, "manual", by=owner))

    assert response.status_code == 200
    assert mailoutbox == [], "nothing is sent by the request, even after its commit"
    notice = unread(bob, lead).select_related("email_message").get()
    message = notice.email_message
    assert (message.status, message.attempts) == ("pending", 0)
    assert (message.channel, message.kind, message.target) == (
        "email",
        "lead.lead_reassigned",
        bob.user.email,
    )

    # The worker: Bob's email goes out; Alice's "new lead" email, still waiting, is
    # skipped, since the lead is no longer hers.
    assert deliver_outbox() == 2

    assert [m.to for m in mailoutbox] == [[bob.user.email]]
    assert mailoutbox[0].subject == "Lead reassigned to you: Jane Roe"
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("sent", 1)
    alices = Notification.all_tenants.select_related("email_message").get(recipient=alice)
    assert alices.email_status == "skipped"
    assert alices.email_message.last_error == "The lead has since been given to another agent."


def test_new_agent_receives_email(
    tenant_client, owner, bob, lead, clock, mailoutbox, deliver_outbox
):
    """The new agent receives an email, with a direct link to the lead."""
    clock.move_to(T0 + minutes(7))

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))
    deliver_outbox()

    assert response.status_code == 200
    [email] = mailoutbox
    assert email.to == [bob.user.email]
    assert "Jane Roe" in email.subject
    # The email: lead details, the reason, the timer warning, a direct link.
    for detail in ("Jane Roe", "+4915112345678", "jane@example.test", "website"):
        assert detail in email.body, detail
    assert "did not claim it in time" in email.body
    assert "5 minutes" in email.body
    assert "2026-11-23 10:12" in email.body
    assert lead_url(lead) in email.body
    notice = unread(bob, lead).get()
    assert notice.email_status == "sent"


# --- timers by reason ------------------------------------------------------------------


@pytest.mark.parametrize("window", [5, 7])
def test_unclaimed_marks_claimed_clears_claim_timer_and_starts_a_contact_window(
    tenant, tenant_client, owner, alice, bob, clock, window
):
    tenant.contact_window_minutes = window
    tenant.save(update_fields=["contact_window_minutes"])
    lead = new_lead(tenant, alice)
    assert lead.claim_deadline == T0 + minutes(5)
    clock.move_to(T0 + minutes(6))
    sweep_sla_breaches()  # stage 1 records the missed claim window
    clock.move_to(T0 + minutes(8))

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 200, response.content
    lead.refresh_from_db()
    assert lead.status == LeadStatus.CLAIMED
    assert lead.claimed_at == T0 + minutes(8)
    assert lead.claim_deadline is None
    assert lead.contact_deadline == T0 + minutes(8 + window)
    assert lead.claim_sla_breached_at == T0 + minutes(6), "history of the breach is kept"
    assert lead.contact_sla_breached_at is None


@pytest.mark.parametrize("window", [5, 7])
def test_no_contact_starts_a_new_contact_window_and_clears_the_contact_breach(
    tenant, tenant_client, owner, alice, bob, clock, window
):
    tenant.contact_window_minutes = window
    tenant.save(update_fields=["contact_window_minutes"])
    lead = new_lead(tenant, alice)
    clock.move_to(T0 + minutes(1))
    alice_client = APIClient()
    alice_client.force_login(alice.user)
    assert alice_client.post(f"/api/v1/leads/{lead.pk}/claim").status_code == 200
    clock.move_to(T0 + minutes(1 + window + 1))
    assert sweep_sla_breaches()["contact"] == 1
    lead.refresh_from_db()
    assert lead.contact_sla_breached_at == T0 + minutes(1 + window + 1)
    now = T0 + minutes(20)
    clock.move_to(now)

    response = post(tenant_client, body_for(lead, bob, "no_contact", by=owner))

    assert response.status_code == 200, response.content
    lead.refresh_from_db()
    assert lead.status == LeadStatus.CLAIMED
    assert lead.contact_deadline == now + minutes(window)
    assert lead.contact_sla_breached_at is None
    assert lead.claimed_at == T0 + minutes(1), "the claim itself is not redone"
    assert lead.claim_deadline is None
    assert history(tenant, lead)[0].stage == "contact"


def test_manual_leaves_every_timer_of_a_new_lead_alone(
    tenant, tenant_client, owner, alice, bob, lead, clock
):
    clock.move_to(T0 + minutes(6))
    sweep_sla_breaches()
    before = lead_row(lead)
    clock.move_to(T0 + minutes(9))

    response = post(tenant_client, body_for(lead, bob, "manual", by=owner))

    assert response.status_code == 200, response.content
    after = lead_row(lead)
    for field in (
        "status",
        "claim_deadline",
        "claimed_at",
        "claim_sla_breached_at",
        "contact_deadline",
        "contacted_at",
        "contact_sla_breached_at",
    ):
        assert after[field] == before[field], field
    assert after["claim_deadline"] == T0 + minutes(5)
    assert after["assigned_agent_id"] == bob.pk
    assert after["reassignment_reason"] == "manual"
    assert history(tenant, lead)[0].stage == "manual"


def test_manual_leaves_the_contact_timer_of_a_claimed_lead_alone(
    tenant, tenant_client, owner, alice, bob, lead, clock
):
    clock.move_to(T0 + minutes(2))
    alice_client = APIClient()
    alice_client.force_login(alice.user)
    assert alice_client.post(f"/api/v1/leads/{lead.pk}/claim").status_code == 200
    clock.move_to(T0 + minutes(3))

    response = post(tenant_client, body_for(lead, bob, "manual", by=owner))

    assert response.status_code == 200
    lead.refresh_from_db()
    assert lead.status == LeadStatus.CLAIMED
    assert lead.claimed_at == T0 + minutes(2)
    assert lead.contact_deadline == T0 + minutes(7)


def test_a_contacted_lead_can_be_handed_over_manually(
    tenant, tenant_client, owner, alice, bob, lead, clock
):
    alice_client = APIClient()
    alice_client.force_login(alice.user)
    alice_client.post(f"/api/v1/leads/{lead.pk}/claim")
    alice_client.post(f"/api/v1/leads/{lead.pk}/contacted")

    response = post(tenant_client, body_for(lead, bob, "manual", by=owner))

    assert response.status_code == 200
    lead.refresh_from_db()
    assert (lead.status, lead.assigned_agent_id) == (LeadStatus.CONTACTED, bob.pk)
    assert (counter(alice), counter(bob)) == (0, 1)


def test_an_unassigned_lead_can_be_given_to_an_agent(tenant, tenant_client, owner, bob, clock):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)
    lead = new_lead(tenant)
    assert lead.assigned_agent_id is None
    assert lead.unassigned_reason == "manual_strategy"
    clock.move_to(T0 + minutes(30))

    response = post(tenant_client, body_for(lead, bob, "manual", by=owner))

    assert response.status_code == 200, response.content
    assert response.json()["reassignment"]["from_agent_id"] is None
    lead.refresh_from_db()
    assert lead.assigned_agent_id == bob.pk
    assert lead.previous_agent_id is None
    assert lead.unassigned_reason == ""
    assert lead.claim_deadline == T0 + minutes(35), "the claim window starts now"
    [row] = history(tenant, lead)
    assert row.from_agent_id is None
    assert counter(bob) == 1
    assert unread(bob, lead).count() == 1


def test_reassigning_again_keeps_the_history_and_counts(
    tenant, tenant_client, owner, alice, bob, lead, clock
):
    clock.move_to(T0 + minutes(7))
    assert post(tenant_client, body_for(lead, bob, "unclaimed", by=owner)).status_code == 200
    clock.move_to(T0 + minutes(13))  # Bob missed his contact window (T0 + 12)

    response = post(tenant_client, body_for(lead, owner, "no_contact", by=owner))

    assert response.status_code == 200, response.content
    lead.refresh_from_db()
    assert (lead.assigned_agent_id, lead.previous_agent_id) == (owner.pk, bob.pk)
    assert lead.reassignment_count == 2
    assert lead.reassignment_reason == "no_contact"
    assert lead.reassigned_at == T0 + minutes(13)
    assert lead.contact_deadline == T0 + minutes(18)
    rows = history(tenant, lead)
    assert [(r.from_agent_id, r.to_agent_id, r.stage) for r in rows] == [
        (alice.pk, bob.pk, "claim"),
        (bob.pk, owner.pk, "contact"),
    ]
    assert (counter(alice), counter(bob), counter(owner)) == (0, 0, 1)


# --- notifications ---------------------------------------------------------------------


def test_only_the_old_agents_notices_for_this_lead_are_marked_read(
    tenant, tenant_client, owner, alice, bob, lead, clock
):
    other_lead = new_lead(tenant, alice, name="Other Lead", phone="+4915199999999")
    clock.move_to(T0 + minutes(6))
    sweep_sla_breaches()  # the admin gets "not claimed in time" notices for both leads
    assert unread(alice, lead).count() == 1  # "New lead for you"
    assert unread(owner, lead).count() == 1
    clock.move_to(T0 + minutes(7))

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 200
    [revoked] = Notification.all_tenants.filter(recipient=alice, lead=lead)
    assert revoked.is_read is True
    assert revoked.read_at == T0 + minutes(7)
    assert unread(alice, other_lead).count() == 1, "Alice's other lead is still hers"
    assert unread(owner, lead).count() == 1, "other agents' notices are not touched"
    assert unread(owner, other_lead).count() == 1


def test_the_new_agent_gets_a_notification_naming_reason_and_deadline(
    tenant, tenant_client, owner, alice, bob, lead, clock
):
    clock.move_to(T0 + minutes(7))

    post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    [notice] = Notification.all_tenants.filter(recipient=bob)
    assert notice.tenant_id == tenant.pk
    assert notice.lead_id == lead.pk
    assert notice.kind == NotificationKind.LEAD_REASSIGNED
    assert notice.is_read is False
    assert notice.title == "Lead reassigned to you: Jane Roe"
    assert "Not claimed in time" in notice.body
    assert "2026-11-23 10:12" in notice.body, "the new contact deadline"


# --- counters --------------------------------------------------------------------------


def test_counters_never_go_below_zero(tenant_client, owner, alice, bob, lead, clock):
    Membership.all_tenants.filter(pk=alice.pk).update(current_lead_count=0)  # drifted

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 200
    assert (counter(alice), counter(bob)) == (0, 1)


def test_counters_follow_the_lead(tenant, tenant_client, owner, alice, bob, clock):
    leads = [new_lead(tenant, alice, name=f"Lead {n}") for n in range(3)]
    assert counter(alice) == 3

    for one in leads[:2]:
        assert post(tenant_client, body_for(one, bob, "manual", by=owner)).status_code == 200

    assert (counter(alice), counter(bob)) == (1, 2)


# --- the sweeps use the same service ---------------------------------------------------


def test_auto_reassign_on_breach_goes_through_the_same_service(
    tenant, owner, alice, bob, lead, clock
):
    tenant.auto_reassign_on_breach = True
    tenant.save(update_fields=["auto_reassign_on_breach"])
    clock.move_to(T0 + minutes(6))

    sweep_sla_breaches()

    lead.refresh_from_db()
    assert (lead.assigned_agent_id, lead.previous_agent_id) == (bob.pk, alice.pk)
    assert lead.status == LeadStatus.CLAIMED
    assert lead.contact_deadline == T0 + minutes(11)
    [row] = history(tenant, lead)
    assert row.reassigned_by_id is None, "the system, not an admin"
    assert (row.reason, row.stage) == ("unclaimed", "claim")
    assert (counter(alice), counter(bob)) == (0, 1)
    activity = ActivityLog.objects.for_tenant(tenant).get(action="lead.reassigned")
    assert (activity.actor_id, activity.actor_label, activity.via) == (
        None,
        "system",
        "job:check_sla",
    )


# --- validation errors (400) -----------------------------------------------------------


def test_missing_fields_are_named(tenant_client, lead):
    response = post(tenant_client, {})

    assert response.status_code == 400
    err = error(response)
    assert err["code"] == "validation_error"
    assert {"lead_id", "to_agent_id", "reason"} <= set(err["fields"])
    assert "notes" not in err["fields"], "notes are optional"


def test_api_key_call_missing_everything_names_every_required_field(tenant_client, lead):
    response = post(tenant_client, {})

    assert response.status_code == 400
    assert {"lead_id", "to_agent_id", "reason", "reassigned_by_id"} <= set(
        error(response)["fields"]
    )


def test_api_key_call_without_reassigned_by_id_is_a_400_naming_it(tenant_client, alice, bob, lead):
    response = post(tenant_client, body_for(lead, bob, "manual"))

    assert response.status_code == 400
    err = error(response)
    assert err["code"] == "validation_error"
    assert set(err["fields"]) == {"reassigned_by_id"}
    assert LeadReassignment.all_tenants.count() == 0


def test_malformed_fields_are_named(tenant_client):
    response = post(
        tenant_client,
        {
            "lead_id": "not-a-uuid",
            "to_agent_id": "12345",
            "reason": "unclaimed",
            "reassigned_by_id": "admin",
            "notes": ["not", "text"],
        },
    )

    assert response.status_code == 400
    assert set(error(response)["fields"]) == {
        "lead_id",
        "to_agent_id",
        "reassigned_by_id",
        "notes",
    }


@pytest.mark.parametrize("reason", ["", "UNCLAIMED", "timeout", None])
def test_unknown_reason_is_a_400(tenant_client, owner, bob, lead, reason):
    response = post(tenant_client, body_for(lead, bob, reason, by=owner))

    assert response.status_code == 400
    err = error(response)
    assert err["code"] == "validation_error"
    assert set(err["fields"]) == {"reason"}
    assert LeadReassignment.all_tenants.count() == 0


def test_the_service_refuses_an_unknown_reason_too(tenant, owner, bob, lead):
    """The admin and the sweeps call the service directly, without the serializer."""
    from core.api import domain_error_status
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput) as refused:
        reassign_lead(
            tenant=tenant,
            lead_id=lead.pk,
            to_agent_id=bob.pk,
            reason="timeout",
            actor=Actor.for_membership(owner),
            reassigned_by=owner,
        )

    assert (refused.value.code, domain_error_status(refused.value)) == ("invalid_reason", 400)


def test_a_body_that_is_not_json_is_a_400(tenant_client):
    response = tenant_client.post(URL, "{lead_id:", content_type="application/json")

    assert response.status_code == 400
    assert error(response)["code"] == "invalid_json"


# --- not found (404) -------------------------------------------------------------------


def test_unknown_lead_is_a_404(tenant_client, owner, bob, lead):
    body = body_for(lead, bob, by=owner, lead_id="00000000-0000-4000-8000-000000000000")

    response = post(tenant_client, body)

    assert response.status_code == 404
    err = error(response)
    assert err["code"] == "lead_not_found"
    assert set(err["fields"]) == {"lead_id"}


def test_a_lead_of_another_tenant_is_a_404(tenant_client, owner, bob, other_tenant, outsider):
    theirs = new_lead(other_tenant, outsider)
    before = lead_row(theirs)

    response = post(tenant_client, body_for(theirs, bob, "manual", by=owner))

    assert response.status_code == 404
    assert error(response)["code"] == "lead_not_found"
    assert lead_row(theirs) == before


def test_unknown_target_agent_is_a_404(tenant_client, owner, lead):
    body = body_for(lead, owner, by=owner, to_agent_id="00000000-0000-4000-8000-000000000000")

    response = post(tenant_client, body)

    assert response.status_code == 404
    err = error(response)
    assert err["code"] == "agent_not_found"
    assert set(err["fields"]) == {"to_agent_id"}


@pytest.mark.parametrize("how", ["membership", "user"])
def test_an_inactive_target_agent_is_a_404(tenant_client, owner, alice, bob, lead, how):
    if how == "membership":
        bob.is_active = False
        bob.save(update_fields=["is_active"])
    else:
        bob.user.is_active = False
        bob.user.save(update_fields=["is_active"])
    before = lead_row(lead)

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 404
    assert error(response)["code"] == "agent_not_found"
    assert lead_row(lead) == before
    assert (counter(alice), counter(bob)) == (1, 0)


def test_an_agent_of_another_tenant_is_a_404(tenant_client, owner, alice, lead, outsider):
    response = post(tenant_client, body_for(lead, outsider, "unclaimed", by=owner))

    assert response.status_code == 404
    assert error(response)["code"] == "agent_not_found"
    assert counter(outsider) == 0
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id == alice.pk


# --- conflicts (409) -------------------------------------------------------------------


def test_reassigning_to_the_current_assignee_is_a_409(tenant_client, owner, alice, lead):
    before = lead_row(lead)

    response = post(tenant_client, body_for(lead, alice, "manual", by=owner))

    assert response.status_code == 409
    err = error(response)
    assert err["code"] == "already_assigned"
    assert set(err["fields"]) == {"to_agent_id"}
    assert lead_row(lead) == before
    assert counter(alice) == 1
    assert LeadReassignment.all_tenants.count() == 0


def test_no_contact_on_a_lead_nobody_claimed_is_a_409(tenant_client, owner, bob, lead):
    response = post(tenant_client, body_for(lead, bob, "no_contact", by=owner))

    assert response.status_code == 409
    assert error(response)["code"] == "reason_does_not_fit"
    assert set(error(response)["fields"]) == {"reason"}


def test_unclaimed_on_a_claimed_lead_is_a_409(tenant_client, owner, alice, bob, lead):
    alice_client = APIClient()
    alice_client.force_login(alice.user)
    alice_client.post(f"/api/v1/leads/{lead.pk}/claim")
    before = lead_row(lead)

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 409
    assert error(response)["code"] == "reason_does_not_fit"
    assert lead_row(lead) == before
    assert (counter(alice), counter(bob)) == (1, 0)
    assert unread(alice, lead).count() == 1


@pytest.mark.parametrize("reason", ["unclaimed", "no_contact", "manual"])
def test_a_closed_lead_cannot_be_reassigned(tenant_client, owner, bob, lead, reason):
    Lead.all_tenants.filter(pk=lead.pk).update(status=LeadStatus.CLOSED)
    before = lead_row(lead)

    response = post(tenant_client, body_for(lead, bob, reason, by=owner))

    assert response.status_code == 409
    assert error(response)["code"] == "lead_closed"
    assert lead_row(lead) == before
    assert counter(bob) == 0


# --- auth ------------------------------------------------------------------------------


def test_nobody_logged_in_and_no_key_is_a_401(api_client, owner, bob, lead):
    response = post(api_client, body_for(lead, bob, by=owner))

    assert response.status_code == 401
    assert error(response)["code"] == "not_authenticated"


def test_a_wrong_api_key_is_a_401(api_client, owner, bob, lead):
    response = api_client.post(
        URL, body_for(lead, bob, by=owner), format="json", HTTP_X_API_KEY="wk_nope_nope"
    )

    assert response.status_code == 401
    assert LeadReassignment.all_tenants.count() == 0


def test_api_key_with_a_super_admin_as_reassigned_by(tenant, tenant_client, bob, lead):
    boss = MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN)

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=boss))

    assert response.status_code == 200
    assert response.json()["reassignment"]["reassigned_by_id"] == str(boss.pk)


def test_api_key_with_a_member_as_reassigned_by_is_a_403(tenant_client, alice, bob, lead):
    before = lead_row(lead)

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=alice))

    assert response.status_code == 403
    err = error(response)
    assert err["code"] == "not_an_admin"
    assert set(err["fields"]) == {"reassigned_by_id"}
    assert lead_row(lead) == before


def test_api_key_with_an_inactive_admin_as_reassigned_by_is_a_403(tenant_client, owner, bob, lead):
    owner.is_active = False
    owner.save(update_fields=["is_active"])

    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 403
    assert error(response)["code"] == "not_an_admin"


def test_api_key_with_another_tenants_admin_as_reassigned_by_is_a_403(
    tenant_client, outsider, bob, lead
):
    response = post(tenant_client, body_for(lead, bob, "unclaimed", by=outsider))

    assert response.status_code == 403
    assert error(response)["code"] == "not_an_admin"


def test_another_tenants_api_key_cannot_see_the_lead(
    api_client, other_api_key, outsider, bob, lead
):
    response = api_client.post(
        URL,
        body_for(lead, bob, "unclaimed", by=outsider),
        format="json",
        HTTP_X_API_KEY=other_api_key[1],
    )

    assert response.status_code == 404
    assert error(response)["code"] == "lead_not_found"


def test_a_logged_in_admin_reassigns_as_themselves(
    tenant, admin_session, owner, alice, bob, lead, clock
):
    clock.move_to(T0 + minutes(7))

    response = post(admin_session, body_for(lead, bob, "unclaimed"))

    assert response.status_code == 200, response.content
    assert response.json()["reassignment"]["reassigned_by_id"] == str(owner.pk)
    [row] = history(tenant, lead)
    assert row.reassigned_by_id == owner.pk
    activity = ActivityLog.objects.for_tenant(tenant).get(action="lead.reassigned")
    assert (activity.actor_id, activity.actor_label) == (owner.pk, owner.user.email)
    assert (counter(alice), counter(bob)) == (0, 1)


def test_a_logged_in_admin_may_name_themselves_as_reassigned_by(admin_session, owner, bob, lead):
    response = post(admin_session, body_for(lead, bob, "manual", by=owner))

    assert response.status_code == 200


def test_a_logged_in_super_admin_can_reassign(tenant, bob, lead):
    boss = MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN)
    client = APIClient()
    client.force_login(boss.user)

    response = post(client, body_for(lead, bob, "manual"))

    assert response.status_code == 200
    assert response.json()["reassignment"]["reassigned_by_id"] == str(boss.pk)


def test_a_logged_in_admin_cannot_act_in_another_admins_name(tenant, admin_session, bob, lead):
    colleague = MembershipFactory(tenant=tenant, role=Role.ADMIN)

    response = post(admin_session, body_for(lead, bob, "manual", by=colleague))

    assert response.status_code == 403
    assert error(response)["code"] == "not_an_admin"
    assert LeadReassignment.all_tenants.count() == 0


def test_a_logged_in_member_is_a_403(alice, bob, lead):
    client = APIClient()
    client.force_login(alice.user)

    response = post(client, body_for(lead, bob, "manual"))

    assert response.status_code == 403
    assert error(response)["code"] == "not_an_admin"
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id == alice.pk


def test_an_admin_of_another_tenant_is_a_404(outsider, bob, lead):
    client = APIClient()
    client.force_login(outsider.user)

    response = post(client, body_for(lead, bob, "manual"))

    assert response.status_code == 404
    assert error(response)["code"] == "lead_not_found"


def test_a_session_request_without_a_csrf_token_is_refused(owner, bob, lead):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(owner.user)

    response = post(client, body_for(lead, bob, "manual"))

    assert response.status_code == 403
    assert "CSRF" in error(response)["message"]
    assert LeadReassignment.all_tenants.count() == 0


def test_a_session_request_with_the_csrf_token_is_accepted(owner, bob, lead):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(owner.user)
    client.get("/accounts/login/")  # any page with a form sets the CSRF cookie
    token = client.cookies["csrftoken"].value

    response = client.post(
        URL, body_for(lead, bob, "manual"), format="json", HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 200, response.content


# --- a database failure: 500, nothing half-written -------------------------------------


def _snapshot(tenant, lead, agents) -> dict:
    return {
        "lead": lead_row(lead),
        "counters": {agent.pk: counter(agent) for agent in agents},
        "reassignments": LeadReassignment.all_tenants.count(),
        "notifications": sorted(
            Notification.all_tenants.values_list("pk", "recipient_id", "is_read", "read_at")
        ),
        "activity": ActivityLog.objects.for_tenant(tenant).count(),
        "outbox": sorted(OutboundMessage.all_tenants.values_list("pk", "status", "target")),
    }


# Each of the service's writes, failing in turn: the first (the lead), one in the
# middle (the history row) and the last three (the new agent's email in the outbox is
# written just before the notice).
FAILING_TABLES = [
    "leads_lead",
    "leads_leadreassignment",
    "audit_activitylog",
    "outbox_outboundmessage",
    "leads_notification",
]


@contextmanager
def failing_trigger(table: str):
    """A real database error on the first write to `table` (the lead is UPDATEd, the
    other tables INSERTed into), removed again afterwards."""
    event = "UPDATE" if table == "leads_lead" else "INSERT"
    if connection.vendor == "postgresql":
        create = [
            "CREATE OR REPLACE FUNCTION fail_for_test() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'simulated database failure'; END $$",
            f"CREATE TRIGGER fail_for_test BEFORE {event} ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION fail_for_test()",
        ]
        drop = [
            f"DROP TRIGGER IF EXISTS fail_for_test ON {table}",
            "DROP FUNCTION IF EXISTS fail_for_test()",
        ]
    else:
        create = [
            f"CREATE TEMP TRIGGER fail_for_test BEFORE {event} ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'simulated database failure'); END"
        ]
        drop = ["DROP TRIGGER IF EXISTS temp.fail_for_test"]
    try:
        with connection.cursor() as cursor:
            for sql in create:
                cursor.execute(sql)
        yield
    finally:
        with connection.cursor() as cursor:
            for sql in drop:
                cursor.execute(sql)


@pytest.mark.parametrize("table", FAILING_TABLES)
def test_a_database_failure_inside_the_request_rolls_the_service_back(
    tenant,
    tenant_client,
    owner,
    alice,
    bob,
    lead,
    clock,
    table,
    django_capture_on_commit_callbacks,
    mailoutbox,
    deliver_outbox,
):
    """Inside the test transaction the service's atomic block is a savepoint."""
    clock.move_to(T0 + minutes(7))
    before = _snapshot(tenant, lead, [alice, bob, owner])
    with failing_trigger(table), django_capture_on_commit_callbacks(execute=True):
        response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 500
    assert error(response)["code"] == "database_error"
    # "outbox" in the snapshot: no email queued for a change that did not happen.
    assert _snapshot(tenant, lead, [alice, bob, owner]) == before
    deliver_outbox()
    assert [m.to for m in mailoutbox] == [[alice.user.email]], "only Alice's, from before"


def _queued_emails(agent) -> list:
    return list(
        OutboundMessage.all_tenants.filter(target=agent.user.email).values_list("kind", "status")
    )


@pytest.mark.postgres
@pytest.mark.parametrize("table", FAILING_TABLES)
@pytest.mark.django_db(transaction=True)
def test_a_database_failure_is_a_json_500_and_changes_nothing(
    tenant, tenant_client, owner, alice, bob, clock, table, mailoutbox, deliver_outbox
):
    lead = new_lead(tenant, alice)  # with Alice's unread notice, which a success marks read
    clock.move_to(T0 + minutes(7))
    before = _snapshot(tenant, lead, [alice, bob, owner])
    with failing_trigger(table):
        response = post(tenant_client, body_for(lead, bob, "unclaimed", by=owner))

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": {
            "code": "database_error",
            "message": "The change could not be saved; nothing was changed.",
        }
    }
    assert _snapshot(tenant, lead, [alice, bob, owner]) == before
    assert _queued_emails(bob) == [], "no email for a change that did not happen"
    # The connection is healthy afterwards: the same call succeeds, and its email,
    # committed with it, is there for the worker.
    assert post(tenant_client, body_for(lead, bob, "unclaimed", by=owner)).status_code == 200
    assert _queued_emails(bob) == [("lead.lead_reassigned", "pending")]
    deliver_outbox()
    assert [m.to for m in mailoutbox] == [[bob.user.email]]
    assert _queued_emails(bob) == [("lead.lead_reassigned", "sent")]
