"""What the admin's lists and pick-an-agent pages show: warning marks that mean a
breach, times in words, agents with their load, the holder of a lead never offered,
routing attempts as tables rather than stored JSON."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.utils import timezone

from core.actor import Actor
from inbox.models import InboxSession
from inbox.services import handover
from leads.formatting import time_to_deadline
from leads.models import Lead
from leads.services import create_lead, reassign_lead
from teams.models import Role
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system()
NOW = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def row_of(html: str, text: str) -> str:
    """The changelist row (<tr>…</tr>) that contains `text`."""
    rows = re.findall(r"<tr[^>]*>.*?</tr>", html, flags=re.S)
    matching = [row for row in rows if text in row]
    assert len(matching) == 1, f"{len(matching)} rows contain {text!r}"
    return matching[0]


@pytest.fixture
def alice(tenant):
    return MembershipFactory(tenant=tenant, user__full_name="Alice Agent", capacity=5)


@pytest.fixture
def tom(tenant):
    return MembershipFactory(tenant=tenant, user__full_name="Tom Target")


def lead_of(tenant, agent, name):
    return create_lead(
        tenant=tenant, actor=SYSTEM, name=name, phone="+100", assigned_agent_id=agent.pk
    )


# --- the time in words -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "words"),
    [
        (timedelta(minutes=4, seconds=30), "4 min left"),
        (timedelta(seconds=40), "40 s left"),
        (-timedelta(minutes=3, seconds=5), "3 min late"),
        (timedelta(hours=1, minutes=5), "1 h 5 min left"),
        (-timedelta(days=2, hours=3), "2 d 3 h late"),
    ],
)
def test_time_to_a_deadline_reads_as_left_or_late(offset, words):
    assert time_to_deadline(NOW + offset, NOW) == words


# --- the leads list --------------------------------------------------------------------


def test_a_breached_lead_has_a_red_warning_and_an_on_time_lead_has_none(owner, tenant, alice):
    late = lead_of(tenant, alice, "Late Larry")
    lead_of(tenant, alice, "Timely Tina")
    Lead.objects.for_tenant(tenant).filter(pk=late.pk).update(
        claim_deadline=timezone.now() - timedelta(minutes=3, seconds=10),
        claim_sla_breached_at=timezone.now(),
    )

    page = login(owner.user).get("/admin/leads/lead/").text

    late_row, timely_row = row_of(page, "Late Larry"), row_of(page, "Timely Tina")
    assert 'class="hv-warning"' in late_row
    assert 'role="img" aria-label="Claim deadline missed"' in late_row
    assert "3 min late" in late_row
    assert "hv-warning" not in timely_row and "missed" not in timely_row
    assert re.search(r"[45] min left", timely_row)
    # No yes/no icons anywhere: a green tick for a breach is what this replaced.
    assert "icon-yes.svg" not in page and "icon-no.svg" not in page


def test_each_open_lead_row_links_to_its_reassign_page(owner, tenant, alice):
    lead = lead_of(tenant, alice, "Rowan Row")

    page = login(owner.user).get("/admin/leads/lead/").text

    assert f'href="/admin/leads/lead/{lead.pk}/reassign/"' in row_of(page, "Rowan Row")


def test_long_names_are_cut_short_with_the_whole_name_in_the_tooltip(owner, tenant, alice):
    name = "Maximilian Alexander Featherstonehaugh-Worthington"
    lead_of(tenant, alice, name)

    row = row_of(login(owner.user).get("/admin/leads/lead/").text, "Maximilian")

    assert f'title="{name}"' in row
    assert ">Maximilian Alexander Fe…<" in row


def test_a_tenant_admin_sees_no_tenant_column_a_superuser_does(owner, tenant, alice):
    lead_of(tenant, alice, "Column Carl")
    root = UserFactory(is_staff=True, is_superuser=True)

    assert "column-tenant_display" not in login(owner.user).get("/admin/leads/lead/").text
    assert "column-tenant_display" in login(root).get("/admin/leads/lead/").text


# --- reassigning a lead ----------------------------------------------------------------


def options(html: str, select_name: str) -> dict[str, str]:
    select = re.search(rf'<select name="{select_name}".*?</select>', html, flags=re.S).group(0)
    return dict(re.findall(r'<option value="([^"]+)"[^>]*>([^<]*)</option>', select))


def test_the_reassign_page_offers_every_agent_but_the_holder_with_their_load(
    owner, tenant, alice, tom
):
    lead = lead_of(tenant, alice, "Held Harry")
    lead_of(tenant, tom, "Tom's Other Lead")

    page = login(owner.user).get(f"/admin/leads/lead/{lead.pk}/reassign/").text

    offered = options(page, "to_agent")
    assert str(alice.pk) not in offered
    assert offered[str(tom.pk)] == "Tom Target — 1 lead / no cap"
    assert f'href="/admin/leads/lead/{lead.pk}/change/" class="button cancel-link">Cancel' in page


def test_the_load_names_the_cap(owner, tenant, alice, tom):
    lead = lead_of(tenant, tom, "Capped Carla")
    lead_of(tenant, alice, "Alice's")

    page = login(owner.user).get(f"/admin/leads/lead/{lead.pk}/reassign/").text

    assert options(page, "to_agent")[str(alice.pk)] == "Alice Agent — 1 lead / cap 5"


def test_choosing_the_holder_keeps_the_form_and_says_why(owner, tenant, alice, tom):
    lead = lead_of(tenant, alice, "Stay Stella")

    response = login(owner.user).post(
        f"/admin/leads/lead/{lead.pk}/reassign/",
        {"to_agent": str(alice.pk), "reason": "manual", "notes": "my notes", "apply": "1"},
    )

    assert response.status_code == 200
    assert "the agent holding the lead is not on offer" in response.text
    assert "my notes</textarea>" in response.text
    lead.refresh_from_db()
    assert lead.assigned_agent_id == alice.pk


def test_bulk_reassign_keeps_the_form_when_every_lead_is_refused(owner, tenant, alice, tom):
    leads = [lead_of(tenant, alice, "Bulk One"), lead_of(tenant, alice, "Bulk Two")]

    response = login(owner.user).post(
        "/admin/leads/lead/",
        {
            "action": "reassign_selected",
            ACTION_CHECKBOX_NAME: [str(lead.pk) for lead in leads],
            "to_agent": str(tom.pk),
            "reason": "no_contact",  # for claimed leads only: both are refused
            "notes": "kept notes",
            "apply": "Reassign",
        },
    )

    assert response.status_code == 200
    assert "Bulk One: not reassigned" in response.text
    assert "kept notes</textarea>" in response.text
    assert 'class="button cancel-link">Cancel' in response.text
    assert str(alice.pk) not in options(response.text, "to_agent")


def test_the_history_caption_names_the_agents(owner, tenant, alice, tom):
    lead = lead_of(tenant, alice, "History Hal")
    reassign_lead(
        tenant=tenant,
        lead_id=lead.pk,
        to_agent_id=tom.pk,
        reason="manual",
        notes="",
        reassigned_by=None,
        actor=SYSTEM,
    )

    page = login(owner.user).get(f"/admin/leads/lead/{lead.pk}/change/").text

    assert "Alice Agent → Tom Target" in page
    assert f"→ {tom.pk}" not in page


# --- sessions --------------------------------------------------------------------------


def session_for(tenant):
    body = handover(
        tenant=tenant, actor=SYSTEM, contact_id="4915100", channel="whatsapp", send_message=False
    ).body
    return InboxSession.objects.for_tenant(tenant).get(pk=body["sessionId"])


def assign_page(client, session, **data):
    return client.post(
        "/admin/inbox/inboxsession/",
        {"action": "assign_to", ACTION_CHECKBOX_NAME: [str(session.pk)], **data},
    )


def test_assign_to_offers_every_agent_but_the_holder_with_open_sessions(owner, tenant, alice):
    session = session_for(tenant)
    holder = session.assigned_agent

    page = assign_page(login(owner.user), session).text

    offered = options(page, "agent")
    assert holder is not None and str(holder.pk) not in offered
    for member in (owner, alice):
        if member.pk != holder.pk:
            cap = "no cap" if member.capacity is None else f"cap {member.capacity}"
            expected = f"{member.display_name} — 0 open sessions / {cap}"
            assert offered[str(member.pk)] == expected
    assert 'href="/admin/inbox/inboxsession/" class="button cancel-link">Cancel' in page


def test_assign_to_the_holder_keeps_the_form(owner, tenant, alice):
    session = session_for(tenant)

    page = assign_page(login(owner.user), session, agent=str(session.assigned_agent_id), apply="1")

    assert page.status_code == 200
    assert "the agent holding the session is not on offer" in page.text
    assert 'name="agent"' in page.text


def test_assign_to_keeps_the_form_when_every_session_is_refused(owner, tenant, alice):
    session = session_for(tenant)
    InboxSession.objects.for_tenant(tenant).filter(pk=session.pk).update(status="closed")
    other = owner if session.assigned_agent_id != owner.pk else alice

    page = assign_page(login(owner.user), session, agent=str(other.pk), apply="1")

    assert page.status_code == 200, "the form again, not the list"
    assert "Open session not found" in page.text
    assert f'<option value="{other.pk}" selected>' in page.text


def test_the_routing_attempt_is_a_table_not_json(owner, tenant, alice):
    session = session_for(tenant)
    client = login(owner.user)

    for url in (
        f"/admin/inbox/inboxsession/{session.pk}/change/",
        f"/admin/inbox/inboxsession/{session.pk}/why-unassigned/",
    ):
        page = client.get(url).text
        assert 'class="hv-table routing-attempt"' in page, url
        assert "Tier tried" in page and "Strategy" in page
        assert "Round robin" in page
        assert '"tiers"' not in page and "'tiers'" not in page, url
        assert "&quot;tiers&quot;" not in page and "&#x27;tiers&#x27;" not in page, url


def test_an_unassigned_session_is_flagged_and_links_to_why(owner, tenant):
    InboxSession.objects.for_tenant(tenant).filter(pk=session_for(tenant).pk).update(
        assigned_agent=None, unassigned_reason="no_agents"
    )

    page = login(owner.user).get("/admin/inbox/inboxsession/").text

    row = row_of(page, "4915100")
    assert 'class="hv-warning"' in row and "Unassigned: No agents found" in row
    assert "why-unassigned/" in row


# --- every list opens ------------------------------------------------------------------


def test_every_registered_list_opens_with_rows(db):
    from tests.e2e.test_admin_lists_browser import seed_every_list

    client = login(seed_every_list())
    for model in admin.site._registry:
        meta = model._meta
        response = client.get(f"/admin/{meta.app_label}/{meta.model_name}/")
        assert response.status_code == 200, meta.label
        assert 'id="result_list"' in response.text, f"{meta.label}: no rows listed"


def test_a_tenant_admin_opens_every_list_they_may_see(tenant):
    # Their lists have no tenant column: every list still opens.
    owner = MembershipFactory(tenant=tenant, role=Role.ADMIN, user__is_staff=True)
    client = login(owner.user)
    for model, model_admin in admin.site._registry.items():
        if not model_admin.has_view_permission(_request_for(owner.user)):
            continue
        meta = model._meta
        assert client.get(f"/admin/{meta.app_label}/{meta.model_name}/").status_code == 200


def _request_for(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = user
    return request
