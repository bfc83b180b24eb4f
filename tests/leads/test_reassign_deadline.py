"""A `manual` reassignment of a lead whose deadline has already passed.

Manual keeps the timers, so the new agent gets a deadline that is already over: the
sweep holds a breach against them at once. The API answer, the audit row, the admin page
and its message say so, and the admin may restart the running window instead
(`restart_window`). The new agent's email is covered in tests/leads/test_emails.py.
"""

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from rest_framework.test import APIClient

from audit.models import ActivityLog
from core.actor import Actor
from leads.models import Lead, LeadStatus, Notification, NotificationKind
from leads.services import claim_lead, create_lead, reassign_lead, sweep_sla_breaches
from teams.models import Role
from tests.factories import MembershipFactory

URL = "/api/v1/reassign-lead"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CHECKED = re.compile(r'<input type="checkbox" name="restart_window"[^>]* checked>')

pytestmark = pytest.mark.django_db


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def parse_dt(value):
    return datetime.fromisoformat(value) if value is not None else None


@pytest.fixture
def clock():
    """Now is pinned to T0 (2026-11-23 10:00 UTC) and only moves when a test moves it."""
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def alice(teammate):
    return teammate


@pytest.fixture
def bob(tenant):
    return MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Bob Builder")


@pytest.fixture
def lead(tenant, alice, clock):
    """Assigned to Alice at T0: claim deadline T0 + 5 min (both windows are 5 minutes)."""
    return create_lead(
        tenant=tenant,
        actor=Actor.system(),
        assigned_agent_id=alice.pk,
        name="Jane Roe",
        phone="+4915112345678",
    )


@pytest.fixture
def claimed(tenant, alice, lead, clock):
    """Claimed by Alice at T0 + 1: contact deadline T0 + 6."""
    clock.move_to(T0 + minutes(1))
    claim_lead(tenant=tenant, lead_id=lead.pk, agent=alice)
    lead.refresh_from_db()
    assert lead.contact_deadline == T0 + minutes(6)
    return lead


def reassign_request(client, lead, to, by, reason="manual", **extra):
    body = {
        "lead_id": str(lead.pk),
        "to_agent_id": str(to.pk),
        "reason": reason,
        "reassigned_by_id": str(by.pk),
        **extra,
    }
    return client.post(URL, body, format="json")


def stored(lead) -> Lead:
    return Lead.all_tenants.get(pk=lead.pk)


def reassigned_activity(tenant) -> dict:
    [activity] = ActivityLog.objects.for_tenant(tenant).filter(action="lead.reassigned")
    return activity.data


def breach_notices(lead):
    return Notification.all_tenants.filter(lead=lead, kind=NotificationKind.CONTACT_SLA_BREACHED)


# --- the API ---------------------------------------------------------------------------


def test_manual_after_the_contact_deadline_says_the_new_agent_is_in_breach_at_once(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(18))  # the contact deadline (T0 + 6) passed 12 minutes ago

    response = reassign_request(tenant_client, claimed, bob, owner)

    assert response.status_code == 200, response.content
    body = response.json()
    reassignment = body["reassignment"]
    assert reassignment["reason"] == "manual"
    assert reassignment["window"] == "contact"
    assert parse_dt(reassignment["deadline"]) == T0 + minutes(6), "kept as it was"
    assert reassignment["deadline_passed"] is True
    assert reassignment["window_restarted"] is False
    assert body["warning"] == {
        "code": "contact_deadline_passed",
        "message": "The contact deadline passed 12 minutes ago and was kept: Bob Builder is "
        "in breach at once. Send restart_window: true to give them a new contact window.",
    }
    assert parse_dt(body["lead"]["contact_deadline"]) == T0 + minutes(6)
    assert stored(claimed).contact_deadline == T0 + minutes(6)


def test_without_restart_the_next_sweep_records_the_breach_against_the_new_agent(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(18))
    reassign_request(tenant_client, claimed, bob, owner)

    assert sweep_sla_breaches() == {"claim": 0, "contact": 1}

    lead = stored(claimed)
    assert lead.contact_sla_breached_at == T0 + minutes(18)
    [notice] = breach_notices(lead)
    assert notice.recipient_id == owner.pk
    assert "assigned to Bob Builder and not contacted by 2026-11-23 10:06 (UTC)" in notice.body


def test_restart_window_gives_the_new_agent_a_fresh_contact_window(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(18))

    response = reassign_request(tenant_client, claimed, bob, owner, restart_window=True)

    assert response.status_code == 200, response.content
    body = response.json()
    new_deadline = T0 + minutes(18 + 5)
    assert body["warning"] is None
    reassignment = body["reassignment"]
    assert (reassignment["window"], parse_dt(reassignment["deadline"])) == (
        "contact",
        new_deadline,
    )
    assert reassignment["deadline_passed"] is True, "it had passed when the admin acted"
    assert reassignment["window_restarted"] is True
    assert reassignment["stage"] == "manual"
    assert parse_dt(body["lead"]["contact_deadline"]) == new_deadline
    lead = stored(claimed)
    assert (lead.status, lead.contact_deadline) == (LeadStatus.CLAIMED, new_deadline)

    # No breach by the next sweep, nor until the new deadline.
    assert sweep_sla_breaches() == {"claim": 0, "contact": 0}
    clock.move_to(new_deadline - timedelta(seconds=1))
    assert sweep_sla_breaches() == {"claim": 0, "contact": 0}
    assert stored(claimed).contact_sla_breached_at is None
    assert not breach_notices(claimed).exists()
    # The new window is a real one: missing it is a breach like any other.
    clock.move_to(new_deadline)
    assert sweep_sla_breaches() == {"claim": 0, "contact": 1}


def test_restart_clears_a_breach_already_recorded_so_the_new_window_is_swept(
    tenant, tenant_client, owner, bob, lead, clock
):
    clock.move_to(T0 + minutes(6))
    assert sweep_sla_breaches() == {"claim": 1, "contact": 0}  # Alice missed T0 + 5
    clock.move_to(T0 + minutes(9))

    response = reassign_request(tenant_client, lead, bob, owner, restart_window=True)

    body = response.json()
    assert body["reassignment"]["window"] == "claim"
    assert body["reassignment"]["window_restarted"] is True
    assert body["warning"] is None
    after = stored(lead)
    assert after.status == LeadStatus.NEW
    assert after.claim_deadline == T0 + minutes(14)
    assert after.claim_sla_breached_at is None
    clock.move_to(T0 + minutes(14))
    assert sweep_sla_breaches() == {"claim": 1, "contact": 0}, "Bob's own window, missed"
    assert stored(lead).claim_sla_breached_at == T0 + minutes(14)


def test_manual_after_the_claim_deadline_warns_about_the_claim_deadline(
    tenant, tenant_client, owner, bob, lead, clock
):
    clock.move_to(T0 + minutes(6))
    assert sweep_sla_breaches() == {"claim": 1, "contact": 0}
    clock.move_to(T0 + minutes(70))  # T0 + 5 passed 1 hour 5 minutes ago

    body = reassign_request(tenant_client, lead, bob, owner).json()

    assert body["reassignment"]["window"] == "claim"
    assert body["reassignment"]["deadline_passed"] is True
    assert body["warning"]["code"] == "claim_deadline_passed"
    assert body["warning"]["message"].startswith(
        "The claim deadline passed 1 hour, 5 minutes ago and was kept: Bob Builder"
    )
    # The breach was recorded for Alice's window already; it stays recorded.
    assert stored(lead).claim_sla_breached_at == T0 + minutes(6)


def test_a_deadline_reached_this_very_moment_counts_as_passed(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(6))  # the sweep would record it now

    body = reassign_request(tenant_client, claimed, bob, owner).json()

    assert body["reassignment"]["deadline_passed"] is True
    assert body["warning"]["message"].startswith(
        "The contact deadline passed less than a minute ago"
    )


def test_manual_before_the_deadline_has_no_warning(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(5))  # one minute left

    body = reassign_request(tenant_client, claimed, bob, owner).json()

    assert body["warning"] is None
    assert body["reassignment"]["deadline_passed"] is False
    assert body["reassignment"]["window_restarted"] is False
    assert parse_dt(body["reassignment"]["deadline"]) == T0 + minutes(6)


def test_restart_window_before_the_deadline_restarts_it_too(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(5))

    body = reassign_request(tenant_client, claimed, bob, owner, restart_window=True).json()

    assert body["reassignment"]["deadline_passed"] is False
    assert body["reassignment"]["window_restarted"] is True
    assert stored(claimed).contact_deadline == T0 + minutes(10)


def test_restart_window_changes_nothing_for_the_reasons_that_restart_anyway(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(18))

    body = reassign_request(
        tenant_client, claimed, bob, owner, reason="no_contact", restart_window=True
    ).json()

    assert body["reassignment"]["window_restarted"] is True
    assert body["warning"] is None
    assert stored(claimed).contact_deadline == T0 + minutes(23)


def test_a_contacted_lead_has_no_window_to_restart(
    tenant, tenant_client, owner, alice, bob, claimed, clock
):
    client = APIClient()
    client.force_login(alice.user)
    assert client.post(f"/api/v1/leads/{claimed.pk}/contacted").status_code == 200
    clock.move_to(T0 + minutes(30))

    response = reassign_request(tenant_client, claimed, bob, owner, restart_window=True)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["reassignment"]["window"] is None
    assert body["reassignment"]["deadline"] is None
    assert body["reassignment"]["deadline_passed"] is False
    assert body["reassignment"]["window_restarted"] is False
    assert body["warning"] is None


@pytest.mark.parametrize("value", ["maybe", 2, None, [True]])
def test_a_restart_window_that_is_not_a_boolean_is_a_400_naming_it(
    tenant_client, owner, bob, claimed, value
):
    response = reassign_request(tenant_client, claimed, bob, owner, restart_window=value)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert set(error["fields"]) == {"restart_window"}
    assert stored(claimed).reassignment_count == 0


def test_the_audit_row_records_the_passed_deadline_and_the_restart(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(18))

    reassign_request(tenant_client, claimed, bob, owner, restart_window=True)

    data = reassigned_activity(tenant)
    assert data["reason"] == "manual"
    assert data["window"] == "contact"
    assert data["previous_deadline"] == (T0 + minutes(6)).isoformat()
    assert data["deadline"] == (T0 + minutes(23)).isoformat()
    assert data["deadline_passed"] is True
    assert data["window_restarted"] is True


def test_the_audit_row_records_a_passed_deadline_that_was_kept(
    tenant, tenant_client, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(18))

    reassign_request(tenant_client, claimed, bob, owner)

    data = reassigned_activity(tenant)
    assert data["previous_deadline"] == data["deadline"] == (T0 + minutes(6)).isoformat()
    assert (data["deadline_passed"], data["window_restarted"]) == (True, False)


def test_the_new_agents_notice_says_the_deadline_has_passed(tenant, owner, bob, claimed, clock):
    clock.move_to(T0 + minutes(18))

    reassign_lead(
        tenant=tenant,
        lead_id=claimed.pk,
        to_agent_id=bob.pk,
        reason="manual",
        actor=Actor.for_membership(owner),
        reassigned_by=owner,
    )

    notice = Notification.all_tenants.get(recipient=bob, kind=NotificationKind.LEAD_REASSIGNED)
    assert (
        "The contact deadline (2026-11-23 10:06 (UTC)) had already passed when it was "
        "reassigned to you: please contact it now." in notice.body
    )


def test_the_schema_documents_restart_window_and_the_warning(client):
    schema = client.get("/api/schema/?format=json").json()

    operation = schema["paths"][URL]["post"]
    request_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request = schema["components"]["schemas"][request_ref.rsplit("/", 1)[1]]
    assert request["properties"]["restart_window"]["type"] == "boolean"
    assert request["properties"]["restart_window"]["default"] is False
    assert "restart_window" not in request.get("required", [])
    answer_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    answer = schema["components"]["schemas"][answer_ref.rsplit("/", 1)[1]]
    assert "warning" in answer["properties"]
    shown = answer["properties"]["reassignment"]
    reassignment_ref = shown.get("$ref") or shown["allOf"][0]["$ref"]
    reassignment = schema["components"]["schemas"][reassignment_ref.rsplit("/", 1)[1]]
    assert {"window", "deadline", "deadline_passed", "window_restarted"} <= set(
        reassignment["properties"]
    )
    assert "restart_window" in operation["description"]


# --- the admin's reassign page ---------------------------------------------------------


def admin_client(owner) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


def page_url(lead) -> str:
    return f"/admin/leads/lead/{lead.pk}/reassign/"


def test_the_page_warns_when_the_contact_deadline_has_passed_and_offers_a_restart(
    owner, claimed, clock
):
    clock.move_to(T0 + minutes(18))

    page = admin_client(owner).get(page_url(claimed))

    assert page.status_code == 200
    assert (
        "The contact deadline passed 12 minutes ago: the new agent will be in breach at once"
        in page.text
    )
    assert 'name="restart_window"' in page.text
    assert "Restart the contact window" in page.text


def test_the_page_names_the_claim_window_of_a_new_lead(owner, lead, clock):
    clock.move_to(T0 + minutes(8))

    page = admin_client(owner).get(page_url(lead))

    assert "The claim deadline passed 3 minutes ago: the new agent will be in breach" in page.text
    assert "Restart the claim window" in page.text


def test_the_page_has_no_warning_nor_checkbox_while_the_deadline_is_ahead(owner, claimed, clock):
    clock.move_to(T0 + minutes(5))

    page = admin_client(owner).get(page_url(claimed))

    assert page.status_code == 200
    assert "in breach at once" not in page.text
    assert 'name="restart_window"' not in page.text


def test_ticking_the_checkbox_restarts_the_window_and_the_message_says_so(
    tenant, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(18))

    done = admin_client(owner).post(
        page_url(claimed),
        {"to_agent": str(bob.pk), "reason": "manual", "restart_window": "on", "apply": "1"},
        follow=True,
    )

    assert done.status_code == 200
    assert done.redirect_chain[-1][0] == f"/admin/leads/lead/{claimed.pk}/change/"
    assert (
        "Jane Roe: reassigned to Bob Builder. The contact window was restarted: new deadline "
        "2026-11-23 10:23 (UTC)." in done.text
    )
    lead = stored(claimed)
    assert (lead.assigned_agent_id, lead.contact_deadline) == (bob.pk, T0 + minutes(23))
    assert reassigned_activity(tenant)["window_restarted"] is True
    assert sweep_sla_breaches() == {"claim": 0, "contact": 0}


def test_without_the_checkbox_the_message_says_the_deadline_stays_passed(
    tenant, owner, bob, claimed, clock
):
    clock.move_to(T0 + minutes(18))

    done = admin_client(owner).post(
        page_url(claimed),
        {"to_agent": str(bob.pk), "reason": "manual", "apply": "1"},
        follow=True,
    )

    assert (
        "Jane Roe: reassigned to Bob Builder. The contact deadline passed 12 minutes ago and "
        "stays passed: Bob Builder is in breach at once." in done.text
    )
    assert stored(claimed).contact_deadline == T0 + minutes(6)
    data = reassigned_activity(tenant)
    assert (data["deadline_passed"], data["window_restarted"]) == (True, False)
    assert sweep_sla_breaches() == {"claim": 0, "contact": 1}


def test_a_refused_reassignment_keeps_the_admins_choices_on_the_page(owner, bob, claimed, clock):
    clock.move_to(T0 + minutes(18))

    page = admin_client(owner).post(
        page_url(claimed),
        {
            "to_agent": str(bob.pk),
            "reason": "unclaimed",  # the lead was claimed: the service refuses
            "notes": "Handing over before the holidays",
            "restart_window": "on",
            "apply": "1",
        },
    )

    assert page.status_code == 200, "the form again, not a redirect"
    assert "not reassigned" in page.text and "is for new leads" in page.text
    assert "Handing over before the holidays</textarea>" in page.text
    assert f'<option value="{bob.pk}" selected>' in page.text
    assert '<option value="unclaimed" selected>' in page.text
    assert CHECKED.search(page.text), "the checkbox is still ticked"
    assert stored(claimed).reassignment_count == 0


def test_an_invalid_form_keeps_the_admins_choices_on_the_page(owner, claimed, clock):
    clock.move_to(T0 + minutes(18))

    page = admin_client(owner).post(
        page_url(claimed),
        {"reason": "manual", "notes": "No agent picked", "restart_window": "on", "apply": "1"},
    )

    assert page.status_code == 200
    assert "This field is required." in page.text
    assert "No agent picked</textarea>" in page.text
    assert CHECKED.search(page.text), "the checkbox is still ticked"
    assert stored(claimed).reassignment_count == 0


def test_the_bulk_page_names_each_late_lead_and_restarts_them_all(
    tenant, owner, alice, bob, claimed, clock
):
    on_time = create_lead(
        tenant=tenant,
        actor=Actor.system(),
        assigned_agent_id=alice.pk,
        name="Max Mustermann",
        phone="+100",
    )  # at T0 + 1: claim deadline T0 + 6
    clock.move_to(T0 + minutes(4))
    selected = [str(claimed.pk), str(on_time.pk)]
    client = admin_client(owner)

    page = client.post(
        "/admin/leads/lead/", {"action": "reassign_selected", ACTION_CHECKBOX_NAME: selected}
    )
    assert page.status_code == 200
    assert "in breach at once" not in page.text

    clock.move_to(T0 + minutes(8))
    page = client.post(
        "/admin/leads/lead/", {"action": "reassign_selected", ACTION_CHECKBOX_NAME: selected}
    )
    assert "Jane Roe: The contact deadline passed 2 minutes ago" in page.text
    assert "Max Mustermann: The claim deadline passed 2 minutes ago" in page.text
    assert "Restart the claim or contact window" in page.text

    done = client.post(
        "/admin/leads/lead/",
        {
            "action": "reassign_selected",
            ACTION_CHECKBOX_NAME: selected,
            "to_agent": str(bob.pk),
            "reason": "manual",
            "restart_window": "on",
            "apply": "Reassign",
        },
        follow=True,
    )
    assert "Jane Roe: reassigned to Bob Builder. The contact window was restarted" in done.text
    assert "Max Mustermann: reassigned to Bob Builder. The claim window was restarted" in done.text
    assert stored(claimed).contact_deadline == T0 + minutes(13)
    assert stored(on_time).claim_deadline == T0 + minutes(13)
