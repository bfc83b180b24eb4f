"""Going away with open work (issue 13, item 6): an admin deactivates an agent or sets
them offline (change form, the tenant's agent rows, or the presence action), lands on
the agent's open conversations and leads, and one button moves them all through the
routing engine: to others, never back to the agent; with nobody to take them, nothing
moves and the page says why. Plus presence in the admin: set through the presence
service, recorded as the admin's."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from audit.models import ActivityLog
from core.actor import Actor
from inbox.models import InboxSession, SessionNotice, SessionStatus
from inbox.services import handover
from leads.models import Lead, LeadReassignment
from leads.services import create_lead
from teams.models import Membership, Presence, PresenceSource, Role
from teams.services import set_agent_presence
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system()
CHANGELIST = "/admin/teams/membership/"


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_of(agent) -> str:
    return reverse("admin-redistribute-agent", args=[agent.pk])


def set_presence(agent, presence):
    set_agent_presence(membership=agent, presence=presence, actor=SYSTEM, source="system")


@pytest.fixture
def sales(tenant, owner):
    """Team Sales: Ann (about to leave) holds two conversations and two leads; Bob is
    her teammate. The owner (an admin) is not in the team."""
    team = TeamFactory(tenant=tenant, name="Sales")
    ann = TeamMemberFactory(team=team, membership__user__full_name="Ann Leaving").membership
    bob = TeamMemberFactory(team=team, membership__user__full_name="Bob Staying").membership
    set_presence(bob, Presence.AWAY)  # so that the work lands on Ann
    for contact in ("+100", "+200"):
        outcome = handover(
            tenant=tenant,
            actor=SYSTEM,
            contact_id=contact,
            channel="whatsapp",
            name=f"Customer {contact}",
            team_id=team.pk,
            send_message=False,
        )
        assert outcome.body["assignedAgent"]["id"] == str(ann.pk)
    for name in ("Lead One", "Lead Two"):
        create_lead(
            tenant=tenant,
            actor=SYSTEM,
            name=name,
            phone="+1",
            assigned_agent_id=ann.pk,
            team_id=team.pk,
        )
    set_presence(bob, Presence.ONLINE)
    return {"team": team, "ann": ann, "bob": bob}


def open_sessions(agent):
    return InboxSession.objects.for_tenant(agent.tenant_id).filter(
        status=SessionStatus.OPEN, assigned_agent=agent
    )


def open_leads(agent):
    return Lead.objects.for_tenant(agent.tenant_id).filter(assigned_agent=agent)


def change_form_data(client, agent, **changes) -> dict:
    page = client.get(f"{CHANGELIST}{agent.pk}/change/")
    form = page.context["adminform"].form
    data = {
        name: "" if value is None else value
        for name, value in ((b.html_name, b.value()) for b in form)
    }
    data = {k: v for k, v in data.items() if v is not False}
    data = {k: ("on" if v is True else str(v)) for k, v in data.items()}
    data.update(changes)
    return data


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- going away in the admin leads to the agent's open work ------------------------------


def test_deactivating_shows_the_work_and_one_click_moves_it_to_teammates(owner, sales):
    ann, bob = sales["ann"], sales["bob"]
    client = login(owner.user)
    data = change_form_data(client, ann)
    data.pop("is_active")  # unticked

    response = client.post(f"{CHANGELIST}{ann.pk}/change/", data)

    assert response.status_code == 302
    assert response.url.startswith(page_of(ann) + "?next=")
    page = client.get(response.url)
    html = page.content.decode()
    assert "deactivated" in html
    assert "Customer +100" in html and "Customer +200" in html
    assert "Lead One" in html and "Lead Two" in html
    assert "Redistribute 2 conversations and 2 leads" in html

    before = ActivityLog.all_tenants.count()
    moved = client.post(page_of(ann), {"next": CHANGELIST})

    assert moved.status_code == 302 and moved.url == CHANGELIST
    assert "Moved 2 conversations and 2 leads" in " ".join(messages_of(moved))
    assert not open_sessions(ann).exists() and not open_leads(ann).exists()
    assert open_sessions(bob).count() == 2 and open_leads(bob).count() == 2
    # Each move is written like any other: audit rows by the admin, history, notices.
    rows = ActivityLog.all_tenants.order_by("created_at")[before:]
    assert sorted(r.action for r in rows) == ["lead.reassigned"] * 2 + ["session.assigned"] * 2
    assert {(r.actor_label, r.via) for r in rows} == {(owner.user.email, "admin")}
    assert {r.data["trigger"] for r in rows if r.action == "session.assigned"} == {"redistribute"}
    assert LeadReassignment.all_tenants.filter(from_agent=ann, to_agent=bob).count() == 2
    assert SessionNotice.all_tenants.filter(recipient=bob, kind="session_transferred").count() == 2
    # Counters say what the rows say.
    ann.refresh_from_db()
    bob.refresh_from_db()
    assert (ann.current_lead_count, bob.current_lead_count) == (0, 2)
    assert (ann.open_session_count, bob.open_session_count) == (0, 2)


def test_setting_offline_on_the_change_form_goes_through_the_presence_service(owner, sales):
    ann = sales["ann"]
    client = login(owner.user)
    before = ActivityLog.all_tenants.count()

    response = client.post(
        f"{CHANGELIST}{ann.pk}/change/", change_form_data(client, ann, presence="offline")
    )

    assert response.status_code == 302 and response.url.startswith(page_of(ann))
    ann.refresh_from_db()
    assert (ann.presence, ann.presence_source) == (Presence.OFFLINE, PresenceSource.ADMIN)
    [row] = ActivityLog.all_tenants.order_by("created_at")[before:]
    assert row.action == "membership.offline"
    assert (row.actor_label, row.via, row.actor_user_id) == (
        owner.user.email,
        "admin",
        owner.user.pk,
    )
    assert row.data == {"from": "online", "to": "offline", "source": "admin"}
    assert "offline" in client.get(response.url).content.decode()


def test_away_on_the_change_form_is_one_row_and_no_detour(owner, sales):
    bob = sales["bob"]
    client = login(owner.user)
    before = ActivityLog.all_tenants.count()

    response = client.post(
        f"{CHANGELIST}{bob.pk}/change/", change_form_data(client, bob, presence="away")
    )

    assert response.status_code == 302 and response.url == CHANGELIST
    bob.refresh_from_db()
    assert (bob.presence, bob.presence_source) == (Presence.AWAY, PresenceSource.ADMIN)
    assert list(
        ActivityLog.all_tenants.order_by("created_at")[before:].values_list("action", flat=True)
    ) == ["membership.away"]


def test_the_offline_action_on_one_agent_leads_to_their_work(owner, sales):
    ann = sales["ann"]
    client = login(owner.user)

    response = client.post(
        CHANGELIST, {"action": "set_offline", ACTION_CHECKBOX_NAME: [str(ann.pk)]}
    )

    assert response.status_code == 302 and response.url.startswith(page_of(ann))
    ann.refresh_from_db()
    assert (ann.presence, ann.presence_source) == (Presence.OFFLINE, PresenceSource.ADMIN)
    assert "Redistribute 2 conversations and 2 leads" in client.get(response.url).content.decode()


def test_the_offline_action_on_several_agents_links_each(owner, sales):
    ann, bob = sales["ann"], sales["bob"]
    client = login(owner.user)

    response = client.post(
        CHANGELIST,
        {"action": "set_offline", ACTION_CHECKBOX_NAME: [str(ann.pk), str(bob.pk)]},
        follow=True,
    )

    html = response.content.decode()
    assert page_of(ann) in html and page_of(bob) in html
    assert Membership.all_tenants.filter(pk__in=[ann.pk, bob.pk], presence="offline").count() == 2


def test_offline_on_the_tenant_page_offers_the_link(owner, sales, tenant):
    ann = sales["ann"]
    client = login(owner.user)
    page = client.get(f"/admin/teams/tenant/{tenant.pk}/change/")
    data = {}
    for form in [page.context["adminform"].form] + [
        f for inline in page.context["inline_admin_formsets"] for f in inline.formset.forms
    ]:
        for bound in form:
            value = bound.value()
            if value is True:
                data[bound.html_name] = "on"
            elif value not in (False, None):
                data[bound.html_name] = str(value)
    for inline in page.context["inline_admin_formsets"]:
        for bound in inline.formset.management_form:
            data[bound.html_name] = str(bound.value())
        for form in inline.formset.forms:
            if form.instance.pk == ann.pk:
                data[f"{form.prefix}-presence"] = "offline"
    before = ActivityLog.all_tenants.count()

    response = client.post(f"/admin/teams/tenant/{tenant.pk}/change/", data, follow=True)

    assert response.status_code == 200
    assert page_of(ann) in response.content.decode()
    ann.refresh_from_db()
    assert (ann.presence, ann.presence_source) == (Presence.OFFLINE, PresenceSource.ADMIN)
    rows = ActivityLog.all_tenants.order_by("created_at")[before:]
    assert [r.action for r in rows] == ["membership.offline"]


def test_going_offline_with_no_work_goes_back_where_the_save_would(owner, sales):
    bob = sales["bob"]
    client = login(owner.user)

    response = client.post(
        f"{CHANGELIST}{bob.pk}/change/",
        change_form_data(client, bob, presence="offline"),
        follow=True,
    )

    assert response.redirect_chain[-1][0] == CHANGELIST
    assert "has no open conversations or leads" in response.content.decode()


# --- nobody else can take it ------------------------------------------------------------


def test_with_nobody_else_nothing_moves_and_the_page_says_why(owner, sales):
    ann, bob = sales["ann"], sales["bob"]
    set_presence(bob, Presence.OFFLINE)
    client = login(owner.user)
    sessions = set(open_sessions(ann).values_list("pk", "updated_at"))
    before = ActivityLog.all_tenants.count()

    # Ann is still online: the engine must still never give her work back to her.
    response = client.post(page_of(ann), follow=True)

    html = response.content.decode()
    assert "2 conversations and 2 leads stay with Ann Leaving" in html
    assert "every agent is away or offline" in html
    assert "Redistribute 2 conversations and 2 leads" in html  # still offered
    assert set(open_sessions(ann).values_list("pk", "updated_at")) == sessions
    assert open_leads(ann).count() == 2
    assert LeadReassignment.all_tenants.count() == 0
    assert ActivityLog.all_tenants.count() == before
    ann.refresh_from_db()
    assert ann.current_lead_count == 2


def test_when_the_agent_is_gone_what_nobody_can_take_waits_unassigned_for_the_next_agent(
    owner, sales, django_capture_on_commit_callbacks
):
    ann, bob = sales["ann"], sales["bob"]
    set_presence(bob, Presence.OFFLINE)
    set_presence(ann, Presence.OFFLINE)
    client = login(owner.user)
    before = ActivityLog.all_tenants.count()

    response = client.post(page_of(ann), follow=True)

    html = response.content.decode()
    assert "2 conversations nobody else can take now wait unassigned" in html
    assert "0 conversations and 2 leads stay with Ann Leaving" in html
    waiting = InboxSession.objects.for_tenant(ann.tenant_id).filter(
        status=SessionStatus.OPEN, assigned_agent__isnull=True
    )
    assert set(waiting.values_list("unassigned_reason", flat=True)) == {"all_away"}
    assert waiting.count() == 2 and open_leads(ann).count() == 2
    rows = ActivityLog.all_tenants.order_by("created_at")[before:]
    assert [r.action for r in rows] == ["session.unassigned"] * 2
    ann.refresh_from_db()
    assert ann.open_session_count == 0

    # The first agent back online gets them (the retry that coming online triggers).
    with django_capture_on_commit_callbacks(execute=True):
        set_presence(bob, Presence.ONLINE)
    assert open_sessions(bob).count() == 2


def test_part_moves_when_only_part_has_someone(owner, sales, tenant):
    """A conversation of another team whose only member is Ann stays; the rest moves."""
    ann, bob = sales["ann"], sales["bob"]
    solo = TeamFactory(tenant=tenant, name="Solo")
    TeamMemberFactory(team=solo, membership=ann)
    handover(
        tenant=tenant,
        actor=SYSTEM,
        contact_id="+300",
        channel="whatsapp",
        name="Solo customer",
        team_id=solo.pk,
        send_message=False,
    )
    client = login(owner.user)

    response = client.post(page_of(ann), follow=True)

    text = " ".join(str(m) for m in response.context["messages"])
    assert "Moved 2 conversations and 2 leads" in text
    assert "1 conversation and 0 leads stay with Ann Leaving" in text
    assert "Solo customer (no agents found" in text
    assert list(open_sessions(ann).values_list("contact_id", flat=True)) == ["+300"]
    assert open_sessions(bob).count() == 2


def test_leads_whose_picked_agent_keeps_losing_its_room_stay_and_the_page_says_why(
    owner, sales, monkeypatch
):
    """Each agent the engine picks for a lead lost its room before the reassignment held
    its row (a pick of another pool filled it): the lead stays, and the page says why;
    the conversations still move."""
    from leads import services as lead_services

    ann, bob = sales["ann"], sales["bob"]
    monkeypatch.setattr(lead_services, "_has_room", lambda agent: False)
    client = login(owner.user)

    response = client.post(page_of(ann), follow=True)

    text = " ".join(str(m) for m in response.context["messages"])
    assert "Moved 2 conversations and 0 leads" in text
    assert "0 conversations and 2 leads stay with Ann Leaving" in text
    assert "Lead One (Every agent picked for the lead lost its room" in text
    assert open_leads(ann).count() == 2 and open_sessions(bob).count() == 2
    assert LeadReassignment.all_tenants.count() == 0
    counts = dict(
        Membership.objects.for_tenant(ann.tenant_id).values_list("pk", "current_lead_count")
    )
    assert (counts[ann.pk], counts[bob.pk]) == (2, 0)


# --- who may --------------------------------------------------------------------------


def test_another_tenants_admin_gets_404_and_nothing_moves(outsider, sales):
    ann = sales["ann"]
    client = login(outsider.user)

    assert client.get(page_of(ann)).status_code == 404
    assert client.post(page_of(ann)).status_code == 404
    assert open_sessions(ann).count() == 2 and open_leads(ann).count() == 2


def test_agents_who_are_not_admins_are_kept_out(tenant, sales):
    member = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__is_staff=True)
    response = login(member.user).post(page_of(sales["ann"]))
    assert response.status_code == 404
    assert open_sessions(sales["ann"]).count() == 2


def test_a_superuser_without_membership_may_redistribute(sales, django_user_model):
    root = django_user_model.objects.create_superuser(email="root@example.test", password="x")
    response = login(root).post(page_of(sales["ann"]))
    assert response.status_code == 302
    assert open_sessions(sales["bob"]).count() == 2 and open_leads(sales["bob"]).count() == 2
    move = LeadReassignment.all_tenants.first()
    assert move.reassigned_by is None


# --- presence in the admin lists ------------------------------------------------------


def test_list_shows_presence_with_its_source_and_filters_by_it(owner, sales):
    client = login(owner.user)
    set_agent_presence(
        membership=sales["bob"], presence="away", actor=SYSTEM, source=PresenceSource.API
    )

    html = client.get(CHANGELIST).content.decode()
    assert "Away (api)" in html
    away = client.get(CHANGELIST, {"presence__exact": "away"})
    assert [m.pk for m in away.context["cl"].result_list] == [sales["bob"].pk]
