"""The agent pages: my conversations, my notices, my presence (issue 13, item 1)."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import ActivityLog
from core.actor import Actor
from inbox.models import InboxSession, SessionNotice, SessionNoticeKind, SessionStatus
from inbox.services import assign_session_to
from leads.models import Notification, NotificationKind
from teams.models import Membership, Presence, PresenceSource, Role
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory

pytestmark = pytest.mark.django_db

CONVERSATIONS = "/conversations/"
CONVERSATIONS_LIVE = "/conversations/live/"
NOTIFICATIONS = "/notifications/"
NOTIFICATIONS_LIVE = "/notifications/live/"
UNREAD = "/notifications/unread/"


def login(membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def conversation(tenant, agent, *, contact="Grace Hopper", context=None, **fields):
    """An open session assigned to `agent` the way a person assigns one (counters,
    deadline and notice included)."""
    session = InboxSession.objects.for_tenant(tenant).create(
        contact_id=f"c-{contact}", contact_name=contact, context=context or {}, **fields
    )
    return assign_session_to(
        tenant=tenant, session_id=session.pk, agent=agent, actor=Actor.system()
    )


def notice(membership, title="Lead assigned", *, kind="lead", minutes_ago=0, is_read=False):
    model, kind_value = (
        (Notification, NotificationKind.LEAD_ASSIGNED)
        if kind == "lead"
        else (SessionNotice, SessionNoticeKind.SESSION_ASSIGNED)
    )
    row = model.objects.for_tenant(membership.tenant_id).create(
        recipient=membership, kind=kind_value, title=title, is_read=is_read
    )
    model.all_tenants.filter(pk=row.pk).update(
        created_at=timezone.now() - timedelta(minutes=minutes_ago)
    )
    return row


@pytest.fixture
def agent(tenant):
    return MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Ana Agent")


# --- Access ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [CONVERSATIONS, NOTIFICATIONS])
def test_pages_send_a_logged_out_visitor_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(f"/accounts/login/?next={url}")


@pytest.mark.parametrize("url", [CONVERSATIONS_LIVE, NOTIFICATIONS_LIVE, UNREAD])
def test_fragments_ask_a_logged_out_page_to_reload_instead_of_swapping_a_login_form(client, url):
    response = client.get(url)
    assert response.status_code == 401
    assert response["HX-Refresh"] == "true"


def test_my_conversations_lists_mine_with_contact_channel_summary_and_clocks(tenant, agent):
    tenant.session_accept_window_minutes = 10
    tenant.save()
    mine = conversation(
        tenant, agent, context={"summary": "Wants to change the delivery address", "x": 1}
    )
    # The page shows whatever deadline the session has (inbox sets it; tested there).
    InboxSession.all_tenants.filter(pk=mine.pk).update(
        accept_deadline=timezone.now() + timedelta(minutes=10)
    )
    someone_else = MembershipFactory(tenant=tenant)
    conversation(tenant, someone_else, contact="Not Mine")

    response = login(agent).get(CONVERSATIONS)

    assert response.status_code == 200
    html = response.content.decode()
    assert "Grace Hopper" in html and "WhatsApp" in html
    assert "Wants to change the delivery address" in html
    assert "Not Mine" not in html
    assert 'data-elapsed-since="' in html  # how long the customer has waited
    assert 'data-countdown-to="' in html  # the accept deadline
    for button in ("Accept", "Close", "Transfer"):
        assert f">{button}</button>" in html


def test_the_context_summary_falls_back_to_a_few_key_value_pairs(tenant, agent):
    conversation(tenant, agent, context={"plan": "Pro", "orderId": "A-17", "nested": {"a": 1}})

    html = login(agent).get(CONVERSATIONS).content.decode()

    assert "plan: Pro · orderId: A-17" in html
    assert "nested" not in html


def test_an_agent_of_two_tenants_sees_both(tenant, other_tenant, agent):
    elsewhere = MembershipFactory(tenant=other_tenant, user=agent.user)
    conversation(tenant, agent, contact="Acme Customer")
    conversation(other_tenant, elsewhere, contact="Globex Customer")

    html = login(agent).get(CONVERSATIONS).content.decode()

    assert "Acme Customer" in html and "Globex Customer" in html


@pytest.mark.parametrize("action", ["accept", "close", "transfer"])
def test_another_agents_or_another_tenants_conversation_is_a_404(
    tenant, other_tenant, agent, outsider, action
):
    teammate = MembershipFactory(tenant=tenant)
    theirs = conversation(tenant, teammate)
    foreign = conversation(other_tenant, outsider)
    client = login(agent)

    for session in (theirs, foreign):
        response = client.post(
            f"/conversations/{session.pk}/{action}/", {"to": f"agent:{agent.pk}"}
        )
        assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.assigned_agent_id == teammate.pk and theirs.status == SessionStatus.OPEN
    assert theirs.accepted_at is None


# --- Accept, close, transfer ---------------------------------------------------------------


def test_accept_from_the_page(tenant, agent):
    session = conversation(tenant, agent)
    client = login(agent)

    response = client.post(f"/conversations/{session.pk}/accept/", follow=True)

    assert "Accepted: Grace Hopper is yours." in response.content.decode()
    session.refresh_from_db()
    assert session.accepted_at is not None
    html = client.get(CONVERSATIONS).content.decode()
    assert ">Accept</button>" not in html and 'data-testid="accepted"' in html


def test_close_from_the_page(tenant, agent):
    session = conversation(tenant, agent)

    response = login(agent).post(f"/conversations/{session.pk}/close/", follow=True)

    assert "Closed the conversation with Grace Hopper." in response.content.decode()
    session.refresh_from_db()
    assert session.status == SessionStatus.CLOSED
    assert 'data-testid="conversation"' not in response.content.decode()
    row = ActivityLog.objects.for_tenant(tenant).get(action="session.closed")
    assert row.via == "agent_page" and row.actor_id == agent.pk


def test_transfer_to_a_teammate_from_the_page(tenant, agent):
    teammate = MembershipFactory(tenant=tenant, user__full_name="Tom Teammate")
    session = conversation(tenant, agent)
    client = login(agent)
    assert "Tom Teammate (online)" in client.get(CONVERSATIONS).content.decode()

    response = client.post(
        f"/conversations/{session.pk}/transfer/", {"to": f"agent:{teammate.pk}"}, follow=True
    )

    assert "Transferred the conversation with Grace Hopper." in response.content.decode()
    session.refresh_from_db()
    assert session.assigned_agent_id == teammate.pk


def test_transfer_to_a_team_lets_the_engine_pick(tenant, agent):
    team = TeamFactory(tenant=tenant, name="Support")
    member = TeamMemberFactory(team=team, tenant=tenant).membership
    session = conversation(tenant, agent)

    response = login(agent).post(
        f"/conversations/{session.pk}/transfer/", {"to": f"team:{team.pk}"}, follow=True
    )

    assert "Transferred" in response.content.decode(), response.content.decode()
    session.refresh_from_db()
    assert session.assigned_agent_id == member.pk


@pytest.mark.parametrize("target", ["", "agent:nope", "team:", "agent:{foreign}"])
def test_a_transfer_target_outside_the_tenant_is_refused_with_a_message(
    tenant, agent, outsider, target
):
    session = conversation(tenant, agent)

    response = login(agent).post(
        f"/conversations/{session.pk}/transfer/",
        {"to": target.format(foreign=outsider.pk)},
        follow=True,
    )

    assert "Choose a teammate or a team." in response.content.decode()
    session.refresh_from_db()
    assert session.assigned_agent_id == agent.pk


# --- Notices -------------------------------------------------------------------------------


def test_notices_of_both_kinds_merge_newest_first(tenant, other_tenant, agent):
    elsewhere = MembershipFactory(tenant=other_tenant, user=agent.user)
    notice(agent, "Oldest lead notice", minutes_ago=30)
    notice(agent, "Middle conversation notice", kind="session", minutes_ago=20)
    notice(elsewhere, "Newest from Globex", kind="session", minutes_ago=1)
    notice(MembershipFactory(tenant=tenant), "Someone else's")

    html = login(agent).get(NOTIFICATIONS).content.decode()

    positions = [
        html.index(t)
        for t in ("Newest from Globex", "Middle conversation notice", "Oldest lead notice")
    ]
    assert positions == sorted(positions)
    assert "Someone else" not in html


def test_mark_one_read_and_mark_all_read(tenant, agent):
    lead_notice = notice(agent, "Lead one")
    session_notice = notice(agent, "Conversation one", kind="session")
    notice(agent, "Lead two")
    client = login(agent)
    assert 'aria-label="3 unread"' in client.get(NOTIFICATIONS).content.decode()

    client.post(f"/notifications/session/{session_notice.pk}/read/")
    session_notice.refresh_from_db()
    assert session_notice.is_read and session_notice.read_at is not None
    assert 'aria-label="2 unread"' in client.get(NOTIFICATIONS).content.decode()

    response = client.post("/notifications/read-all/", follow=True)
    assert "Marked 2 notices read." in response.content.decode()
    lead_notice.refresh_from_db()
    assert lead_notice.is_read and lead_notice.read_at is not None
    assert 'aria-label="0 unread"' in response.content.decode()


def test_someone_elses_notice_cannot_be_marked_read(tenant, agent, outsider):
    theirs = notice(MembershipFactory(tenant=tenant))
    foreign = notice(outsider, kind="session")
    client = login(agent)

    assert client.post(f"/notifications/lead/{theirs.pk}/read/").status_code == 404
    assert client.post(f"/notifications/session/{foreign.pk}/read/").status_code == 404
    assert client.post(f"/notifications/bogus/{theirs.pk}/read/").status_code == 404
    client.post("/notifications/read-all/")
    theirs.refresh_from_db()
    foreign.refresh_from_db()
    assert not theirs.is_read and not foreign.is_read


@pytest.mark.parametrize("url", [CONVERSATIONS, NOTIFICATIONS, "/leads/"])
def test_every_agent_page_shows_the_unread_count_and_the_presence_switch(tenant, agent, url):
    notice(agent)
    notice(agent, kind="session")
    notice(agent, is_read=True)

    html = login(agent).get(url).content.decode()

    assert 'data-testid="unread-count"' in html and 'aria-label="2 unread"' in html
    assert 'action="/presence/"' in html
    assert 'data-heartbeat-url="/presence/heartbeat"' in html


def test_the_login_page_and_the_admin_show_no_agent_header(client, tenant, owner):
    assert 'data-testid="unread-count"' not in client.get("/accounts/login/").content.decode()


def test_the_unread_fragment_counts_both_kinds(tenant, agent):
    notice(agent)
    notice(agent, kind="session")

    response = login(agent).get(UNREAD)

    assert response.status_code == 200
    assert 'aria-label="2 unread"' in response.content.decode()


# --- Presence ------------------------------------------------------------------------------


def test_the_presence_switch_sets_every_tenant_from_the_page(tenant, other_tenant, agent):
    elsewhere = MembershipFactory(tenant=other_tenant, user=agent.user)

    response = login(agent).post("/presence/", {"status": "away", "next": "/notifications/"})

    assert response.status_code == 302 and response["Location"] == "/notifications/"
    for membership in (agent, elsewhere):
        membership.refresh_from_db()
        assert membership.presence == Presence.AWAY
        assert membership.presence_source == PresenceSource.PAGE
    row = ActivityLog.objects.for_tenant(tenant).get(action="membership.away")
    assert row.via == "agent_page" and row.data["source"] == "page"


def test_the_presence_switch_refuses_an_unknown_status_and_an_outside_next(tenant, agent):
    client = login(agent)

    response = client.post("/presence/", {"status": "asleep"}, follow=True)
    assert "status must be one of" in response.content.decode()
    agent.refresh_from_db()
    assert agent.presence == Presence.ONLINE

    response = client.post("/presence/", {"status": "away", "next": "https://evil.test/"})
    assert response["Location"] == "/conversations/"


def test_the_header_shows_the_current_presence(tenant, agent):
    Membership.all_tenants.filter(pk=agent.pk).update(presence=Presence.AWAY)

    html = login(agent).get(CONVERSATIONS).content.decode()

    assert 'class="away on" aria-pressed="true">Away' in html


def test_the_heartbeat_records_that_the_pages_are_open(tenant, other_tenant, agent):
    elsewhere = MembershipFactory(tenant=other_tenant, user=agent.user)
    before = timezone.now()

    response = login(agent).post("/presence/heartbeat")

    assert response.status_code == 204
    for membership in (agent, elsewhere):
        membership.refresh_from_db()
        assert membership.last_seen_at >= before


def test_a_logged_out_heartbeat_is_a_401_not_a_login_page(client):
    assert client.post("/presence/heartbeat").status_code == 401


def test_the_heartbeat_needs_the_csrf_token(tenant, agent):
    client = Client(enforce_csrf_checks=True)
    client.force_login(agent.user)

    assert client.post("/presence/heartbeat").status_code == 403


def test_logging_out_takes_page_set_presence_offline(tenant, agent):
    client = login(agent)
    client.post("/presence/", {"status": "online"})

    client.post("/accounts/logout/")

    agent.refresh_from_db()
    assert agent.presence == Presence.OFFLINE


def test_logging_out_leaves_presence_an_admin_set_alone(tenant, agent):
    Membership.all_tenants.filter(pk=agent.pk).update(
        presence=Presence.ONLINE, presence_source=PresenceSource.ADMIN
    )

    login(agent).post("/accounts/logout/")

    agent.refresh_from_db()
    assert agent.presence == Presence.ONLINE


# --- Live fragments and what they cost -------------------------------------------------------


def test_a_poll_of_an_unchanged_list_answers_204_and_a_changed_one_the_new_list(tenant, agent):
    conversation(tenant, agent, contact="First")
    client = login(agent)
    first = client.get(CONVERSATIONS_LIVE)
    assert first.status_code == 200
    version = first.content.decode().split('data-live-version="')[1].split('"')[0]

    assert client.get(CONVERSATIONS_LIVE, HTTP_X_LIVE_VERSION=version).status_code == 204

    conversation(tenant, agent, contact="Second")
    changed = client.get(CONVERSATIONS_LIVE, HTTP_X_LIVE_VERSION=version)
    assert changed.status_code == 200 and "Second" in changed.content.decode()


def test_a_poll_of_notices_answers_204_until_one_arrives(tenant, agent):
    client = login(agent)
    first = client.get(NOTIFICATIONS_LIVE)
    version = first.content.decode().split('data-live-version="')[1].split('"')[0]
    assert client.get(NOTIFICATIONS_LIVE, HTTP_X_LIVE_VERSION=version).status_code == 204

    notice(agent, "Fresh notice", kind="session")

    changed = client.get(NOTIFICATIONS_LIVE, HTTP_X_LIVE_VERSION=version)
    assert changed.status_code == 200 and "Fresh notice" in changed.content.decode()


def test_query_counts_do_not_grow_with_the_rows(
    tenant, other_tenant, agent, django_assert_max_num_queries
):
    elsewhere = MembershipFactory(tenant=other_tenant, user=agent.user)
    for m in (agent, elsewhere):
        TeamFactory(tenant=m.tenant)
        MembershipFactory.create_batch(3, tenant=m.tenant)
        for i in range(5):
            conversation(m.tenant, m, contact=f"Customer {m.tenant.slug} {i}")
            notice(m, kind="lead")
            notice(m, kind="session")
    client = login(agent)
    client.get(CONVERSATIONS)  # the session's and the user's rows are warm from here

    # session + user, memberships, sessions, teammates, teams, 2 unread COUNTs
    with django_assert_max_num_queries(8):
        assert client.get(CONVERSATIONS).status_code == 200
    # session + user, memberships, sessions, teammates, teams
    with django_assert_max_num_queries(6):
        assert client.get(CONVERSATIONS_LIVE).status_code == 200
    # session + user, lead notices, conversation notices, memberships, 2 COUNTs
    with django_assert_max_num_queries(7):
        assert client.get(NOTIFICATIONS).status_code == 200
    with django_assert_max_num_queries(4):
        assert client.get(NOTIFICATIONS_LIVE).status_code == 200
    # session + user, 2 COUNTs
    with django_assert_max_num_queries(4):
        assert client.get(UNREAD).status_code == 200
    client.post("/presence/heartbeat")
    # session + user, memberships; a beat within the minute writes nothing
    with django_assert_max_num_queries(3):
        assert client.post("/presence/heartbeat").status_code == 204


# --- Email preference --------------------------------------------------------------------


def test_an_agent_turns_conversation_emails_on_and_off_from_the_notices_page(
    tenant, other_tenant, agent
):
    elsewhere = MembershipFactory(tenant=other_tenant, user=agent.user)
    client = login(agent)
    page = client.get(NOTIFICATIONS).content.decode()
    assert 'name="enabled"' in page and 'name="enabled" checked' not in page

    response = client.post("/notifications/email/", {"enabled": "on"})

    assert response.status_code == 302
    for membership in (agent, elsewhere):
        membership.refresh_from_db()
        assert membership.email_on_conversation is True
    rows = ActivityLog.all_tenants.filter(action="membership.updated", target_id=str(agent.pk))
    assert [row.data["changes"] for row in rows] == [{"email_on_conversation": [False, True]}]
    assert 'name="enabled" checked' in client.get(NOTIFICATIONS).content.decode()

    client.post("/notifications/email/", {"enabled": "on"})  # again: nothing changes
    assert rows.all().count() == 1, "a preference set to what it was is not a change"

    client.post("/notifications/email/", {})  # the box unticked
    agent.refresh_from_db()
    assert agent.email_on_conversation is False
    assert rows.all().count() == 2


def test_with_emails_on_a_new_conversation_also_queues_an_email(tenant, agent):
    from outbox.models import OutboundMessage

    login(agent).post("/notifications/email/", {"enabled": "on"})
    agent.refresh_from_db()  # as the admin's "Assign to…" loads the agent it assigns
    conversation(tenant, agent, contact="Ada Lovelace")
    notice_row = SessionNotice.objects.for_tenant(tenant).get(recipient=agent)
    assert notice_row.email_message is not None
    email = OutboundMessage.all_tenants.get(pk=notice_row.email_message_id)
    assert email.channel == "email" and email.target == agent.user.email
