"""The SLA dashboard of the admin: who may open it, what each chart counts, the date
filter, the CSV exports and the wording of the leads at risk."""

import csv
import io
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import ActivityLog
from config.dashboard import CHARTS, time_left_phrase
from inbox.models import InboxSession, SessionStatus
from leads.models import Lead, LeadStatus, ReassignmentReason
from leads.services import sweep_sla_breaches
from outbox.models import MessageStatus, OutboundMessage
from teams.models import Role
from teams.routing.reasons import UnassignedReason
from tests.factories import MembershipFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/dashboard/"
FRAGMENT = "/admin/dashboard/at-risk/"


def export_url(chart: str) -> str:
    return f"/admin/dashboard/export/{chart}.csv"


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def csv_rows(response) -> list[dict]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def make_lead(tenant, agent=None, **fields) -> Lead:
    fields.setdefault("name", f"Lead {uuid.uuid4().hex[:6]}")
    fields.setdefault("phone", "+100")
    if agent is not None:
        fields.setdefault("assigned_agent", agent)
        fields.setdefault("assigned_at", timezone.now())
    return Lead.objects.for_tenant(tenant).create(**fields)


def failed_message(tenant, channel="email", **fields) -> OutboundMessage:
    fields.setdefault("last_error", "550 mailbox unavailable")
    return OutboundMessage.objects.for_tenant(tenant).create(
        channel=channel,
        kind=fields.pop("kind", "lead_notification"),
        target=fields.pop("target", "someone@example.test"),
        idempotency_key=uuid.uuid4().hex,
        status=fields.pop("status", MessageStatus.FAILED),
        next_attempt_at=timezone.now(),
        **fields,
    )


def open_session(tenant, reason="", agent=None, status=SessionStatus.OPEN) -> InboxSession:
    return InboxSession.objects.for_tenant(tenant).create(
        contact_id=uuid.uuid4().hex,
        unassigned_reason=reason,
        assigned_agent=agent,
        status=status,
    )


def day_at_noon(days_ago: int) -> datetime:
    day = timezone.localdate() - timedelta(days=days_ago)
    return timezone.make_aware(datetime.combine(day, time(12)))


@pytest.fixture
def superuser(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def two_tenants(tenant, other_tenant):
    """Tenant A ("Acme") and tenant B ("Globex"), each with a lead at risk, a breach, a
    claimed and contacted lead, a busy agent, an unassigned session and a failed
    message, every one named after its tenant."""
    now = timezone.now()
    for t, word in ((tenant, "Acme"), (other_tenant, "Globex")):
        agent = MembershipFactory(
            tenant=t, user__full_name=f"{word} Agent", capacity=4, current_lead_count=3
        )
        team = TeamFactory(tenant=t, name=f"{word} Team")
        make_lead(
            t, agent, name=f"{word} Risky", claim_deadline=now + timedelta(minutes=4, seconds=30)
        )
        make_lead(t, agent, name=f"{word} Breached", claim_deadline=now - timedelta(minutes=2))
        make_lead(
            t,
            agent,
            team=team,
            name=f"{word} Done",
            status=LeadStatus.CONTACTED,
            assigned_at=now - timedelta(minutes=10),
            claimed_at=now - timedelta(minutes=8),
            contacted_at=now - timedelta(minutes=5),
        )
        open_session(t, reason=UnassignedReason.ALL_AWAY)
        failed_message(t, channel="email", target=f"{word.lower()}@example.test")
    # Records the breaches of both tenants' "Breached" leads, as in production.
    assert sweep_sla_breaches(now=now) == {"claim": 2, "contact": 0}
    return tenant, other_tenant


# --- who may open it ------------------------------------------------------------------


@pytest.mark.parametrize("url", [DASHBOARD, FRAGMENT, export_url("at_risk")])
def test_anonymous_and_non_staff_users_are_sent_to_the_admin_login(url, teammate):
    assert Client().get(url).status_code == 302
    response = login(teammate.user).get(url)  # an agent, not staff
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", [DASHBOARD, FRAGMENT, export_url("at_risk")])
def test_staff_who_administer_no_tenant_are_refused(url, tenant):
    member = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__is_staff=True)
    assert login(member.user).get(url).status_code == 403
    nobody = UserFactory(is_staff=True)
    assert login(nobody).get(url).status_code == 403


def test_the_admin_index_links_to_the_dashboard_for_those_who_may_open_it(tenant, owner):
    page = login(owner.user).get("/admin/")
    assert page.status_code == 200
    assert f'href="{reverse("admin-dashboard")}"' in page.content.decode()
    member = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__is_staff=True)
    page = login(member.user).get("/admin/")
    assert "SLA dashboard" not in page.content.decode()


# --- tenant scoping -------------------------------------------------------------------


def test_a_tenant_admin_sees_only_their_tenant_on_the_page(two_tenants, owner):
    page = login(owner.user).get(DASHBOARD)
    assert page.status_code == 200
    html = page.content.decode()
    for shown in ("Acme Risky", "Acme Agent", "Acme Team"):
        assert shown in html
    assert "Globex" not in html
    # One breach, one failed message, one unassigned session: A's, not A's and B's.
    assert page.context["charts"]["breaches"].data["claim_total"] == 1
    assert page.context["charts"]["failed_by_channel"].rows == [["email", 1]]
    assert page.context["charts"]["unassigned"].rows == [
        ["all_away", UnassignedReason.ALL_AWAY.label, 1]
    ]


@pytest.mark.parametrize("chart", list(CHARTS))
def test_no_export_of_a_tenant_admin_holds_another_tenants_rows(chart, two_tenants, owner):
    rows = csv_rows(login(owner.user).get(export_url(chart)))
    assert rows, f"{chart}: tenant A's own rows are missing"
    text = repr(rows)
    assert "Globex" not in text and "globex" not in text


def test_the_numbers_a_tenant_admin_exports_count_their_tenant_only(two_tenants, owner):
    client = login(owner.user)
    breaches = csv_rows(client.get(export_url("breaches")))
    assert sum(int(r["claim"]) for r in breaches) == 1
    assert csv_rows(client.get(export_url("unassigned"))) == [
        {"reason": "all_away", "description": UnassignedReason.ALL_AWAY.label, "sessions": "1"}
    ]
    assert csv_rows(client.get(export_url("failed_by_channel"))) == [
        {"channel": "email", "failed": "1"}
    ]
    assert [r["claims"] for r in csv_rows(client.get(export_url("times_by_team")))] == ["1"]


def test_a_tenant_admin_cannot_pick_another_tenant(two_tenants, owner, other_tenant):
    client = login(owner.user)
    page = client.get(DASHBOARD, {"tenant": str(other_tenant.pk)})
    assert page.status_code == 400
    assert "Globex" not in page.content.decode()
    assert "Select a valid choice" in page.content.decode()
    response = client.get(export_url("at_risk"), {"tenant": str(other_tenant.pk)})
    assert response.status_code == 400
    assert b"tenant" in response.content
    assert b"Globex" not in response.content


def test_an_admin_of_two_tenants_sees_both_and_may_pick_one(two_tenants, owner, other_tenant):
    MembershipFactory(tenant=other_tenant, user=owner.user, role=Role.SUPER_ADMIN)
    client = login(owner.user)
    rows = csv_rows(client.get(export_url("at_risk")))
    assert {(r["lead"], r["tenant"]) for r in rows} == {
        ("Acme Risky", "Acme"),
        ("Globex Risky", "Globex"),
    }
    rows = csv_rows(client.get(export_url("at_risk"), {"tenant": str(other_tenant.pk)}))
    assert [r["lead"] for r in rows] == ["Globex Risky"]


def test_a_superuser_sees_every_tenant_and_filters_by_one(two_tenants, superuser, tenant):
    client = login(superuser)
    page = client.get(DASHBOARD)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Acme Risky" in html and "Globex Risky" in html
    assert page.context["charts"]["breaches"].data["claim_total"] == 2
    assert page.context["charts"]["failed_by_channel"].rows == [["email", 2]]

    page = client.get(DASHBOARD, {"tenant": str(tenant.pk)})
    assert [row[2] for row in page.context["charts"]["at_risk"].rows] == ["Acme"]
    assert [row[0] for row in page.context["charts"]["load"].rows] == ["Acme"]
    assert page.context["charts"]["breaches"].data["claim_total"] == 1
    fragment = client.get(FRAGMENT, {"tenant": str(tenant.pk)}).content.decode()
    assert "Acme Risky" in fragment and "Globex Risky" not in fragment


# --- the leads at risk ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "phrase"),
    [
        (270, "4 min left"),
        (59, "under 1 min left"),
        (0, "under 1 min late"),
        (-10, "under 1 min late"),
        (-200, "3 min late"),
        (-3900, "1 h 5 min late"),
        (7200, "2 h left"),
    ],
)
def test_time_left_is_said_in_words(seconds, phrase):
    assert time_left_phrase(seconds) == phrase


def test_leads_at_risk_are_the_open_deadlines_soonest_first(tenant, owner):
    agent = MembershipFactory(tenant=tenant)
    now = timezone.now()
    make_lead(tenant, agent, name="Late", claim_deadline=now - timedelta(minutes=3, seconds=20))
    make_lead(tenant, agent, name="Soon", claim_deadline=now + timedelta(minutes=4, seconds=30))
    make_lead(
        tenant,
        agent,
        name="Contact soon",
        status=LeadStatus.CLAIMED,
        claimed_at=now,
        contact_deadline=now + timedelta(minutes=2, seconds=30),
    )
    make_lead(tenant, agent, name="Far", claim_deadline=now + timedelta(minutes=30))
    make_lead(
        tenant,
        agent,
        name="Already breached",
        claim_deadline=now - timedelta(minutes=9),
        claim_sla_breached_at=now - timedelta(minutes=8),
    )
    make_lead(
        tenant,
        agent,
        name="Contacted",
        status=LeadStatus.CONTACTED,
        contact_deadline=now - timedelta(minutes=1),
    )

    client = login(owner.user)
    rows = csv_rows(client.get(export_url("at_risk")))
    assert [(r["lead"], r["stage"], r["time_left"]) for r in rows] == [
        ("Late", "claim", "3 min late"),
        ("Contact soon", "contact", "2 min left"),
        ("Soon", "claim", "4 min left"),
    ]
    fragment = client.get(FRAGMENT).content.decode()
    assert "3 min late" in fragment and "4 min left" in fragment
    assert "-0:" not in fragment and "- " not in fragment.split("<tbody>")[1]
    late = Lead.objects.for_tenant(tenant).get(name="Late")
    assert f'href="/admin/leads/lead/{late.pk}/change/"' in fragment

    # A wider horizon takes in the lead half an hour away.
    rows = csv_rows(client.get(export_url("at_risk"), {"within": "45"}))
    assert [r["lead"] for r in rows][-1] == "Far"
    assert rows[-1]["time_left"] in ("29 min left", "30 min left")


def test_the_page_points_its_script_at_the_fragment_with_the_same_filters(tenant, owner):
    page = login(owner.user).get(DASHBOARD, {"within": "20"})
    html = page.content.decode()
    today = timezone.localdate()
    start = today - timedelta(days=29)
    assert (
        f'data-refresh-url="/admin/dashboard/at-risk/?from={start}&amp;to={today}&amp;within=20"'
        in html
    )
    assert 'src="/static/dashboard/dashboard.js"' in html
    assert "<script>" not in html  # the CSP allows no inline script


# --- the historical charts ------------------------------------------------------------


def test_breaches_are_counted_per_day_and_stage(tenant, owner):
    agent = MembershipFactory(tenant=tenant)
    now = timezone.now()
    for name in ("C1", "C2", "C3"):
        make_lead(tenant, agent, name=name, claim_deadline=now - timedelta(minutes=1))
    make_lead(
        tenant,
        agent,
        name="K1",
        status=LeadStatus.CLAIMED,
        claimed_at=now,
        contact_deadline=now - timedelta(minutes=1),
    )
    assert sweep_sla_breaches(now=now) == {"claim": 3, "contact": 1}
    # Move two claim breaches into the past: one 3 days ago, one 40 days ago.
    logs = ActivityLog.objects.for_tenant(tenant).filter(action="lead.claim_sla_breached")
    first, second = list(logs.order_by("target_label"))[:2]
    ActivityLog.objects.for_tenant(tenant).filter(pk=first.pk).update(created_at=day_at_noon(3))
    ActivityLog.objects.for_tenant(tenant).filter(pk=second.pk).update(created_at=day_at_noon(40))

    rows = csv_rows(login(owner.user).get(export_url("breaches")))
    assert len(rows) == 30  # every day of the default range, zeros included
    today = timezone.localdate()
    by_day = {r["day"]: (int(r["claim"]), int(r["contact"]), int(r["total"])) for r in rows}
    assert by_day[today.isoformat()] == (1, 1, 2)
    assert by_day[(today - timedelta(days=3)).isoformat()] == (1, 0, 1)
    assert sum(v[2] for v in by_day.values()) == 3  # the one 40 days ago is outside

    page = login(owner.user).get(DASHBOARD)
    assert page.context["charts"]["breaches"].data == {"claim_total": 2, "contact_total": 1}
    assert "<svg" in page.content.decode()


def test_the_date_filter_applies_to_the_historical_charts(tenant, owner):
    agent = MembershipFactory(tenant=tenant)
    now = timezone.now()
    old = make_lead(tenant, agent, name="Old", claim_deadline=now - timedelta(minutes=1))
    assert sweep_sla_breaches(now=now)["claim"] == 1
    ActivityLog.objects.for_tenant(tenant).filter(target_id=str(old.pk)).update(
        created_at=day_at_noon(40)
    )
    failed_message(tenant, channel="whatsapp", created_at=day_at_noon(40))
    failed_message(tenant, channel="email")

    client = login(owner.user)
    forty = (timezone.localdate() - timedelta(days=40)).isoformat()
    params = {"from": forty, "to": forty}
    rows = csv_rows(client.get(export_url("breaches"), params))
    assert rows == [{"day": forty, "claim": "1", "contact": "0", "total": "1"}]
    assert csv_rows(client.get(export_url("failed_by_channel"), params)) == [
        {"channel": "whatsapp", "failed": "1"}
    ]
    # The default range (the last 30 days) has the email only.
    assert csv_rows(client.get(export_url("failed_by_channel"))) == [
        {"channel": "email", "failed": "1"}
    ]
    page = client.get(DASHBOARD, params)
    assert f'value="{forty}"' in page.content.decode()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-02-10", "to": "2026-02-01"}, "from"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-45"}, "to"),
        ({"within": "0"}, "within"),
        ({"within": "lots"}, "within"),
    ],
)
def test_bad_filters_are_a_400_naming_the_field(params, field, tenant, owner):
    client = login(owner.user)
    response = client.get(export_url("breaches"), params)
    assert response.status_code == 400
    assert response.content.decode().startswith(f"{field}:")
    page = client.get(DASHBOARD, params)
    assert page.status_code == 400
    assert page.context["form"].errors.keys() == {field}


def test_time_to_claim_and_contact_per_team_and_agent_with_percentiles(tenant, owner):
    sales = TeamFactory(tenant=tenant, name="Sales")
    ann = MembershipFactory(tenant=tenant, user__full_name="Ann")
    bob = MembershipFactory(tenant=tenant, user__full_name="Bob")
    claimed = timezone.now() - timedelta(hours=1)
    # Time to claim 60, 120, 180 and 600 s (Ann, Ann, Bob, Bob); time to contact 30 s
    # for Ann's two leads.
    for agent, claim_seconds, contact_seconds in (
        (ann, 60, 30),
        (ann, 120, 30),
        (bob, 180, None),
        (bob, 600, None),
    ):
        make_lead(
            tenant,
            agent,
            team=sales,
            status=LeadStatus.CONTACTED if contact_seconds else LeadStatus.CLAIMED,
            assigned_at=claimed - timedelta(seconds=claim_seconds),
            claimed_at=claimed,
            contacted_at=claimed + timedelta(seconds=contact_seconds) if contact_seconds else None,
        )
    # Not measured: a claim stamped by an "unclaimed" reassignment, and a lead of no team
    # claimed 40 days ago.
    make_lead(
        tenant,
        ann,
        team=sales,
        status=LeadStatus.CLAIMED,
        assigned_at=claimed,
        claimed_at=claimed,
        reassigned_at=claimed,
        reassignment_reason=ReassignmentReason.UNCLAIMED,
    )
    make_lead(
        tenant,
        ann,
        status=LeadStatus.CLAIMED,
        assigned_at=day_at_noon(40) - timedelta(seconds=5),
        claimed_at=day_at_noon(40),
    )

    client = login(owner.user)
    teams = csv_rows(client.get(export_url("times_by_team")))
    # percentile_cont: median of 60,120,180,600 is 150; p90 is 180 + 0.7 * 420 = 474.
    assert teams == [
        {
            "tenant": "Acme",
            "team": "Sales",
            "claims": "4",
            "claim_median_seconds": "150.0",
            "claim_p90_seconds": "474.0",
            "contacts": "2",
            "contact_median_seconds": "30.0",
            "contact_p90_seconds": "30.0",
        }
    ]
    agents = {r["agent"]: r for r in csv_rows(client.get(export_url("times_by_agent")))}
    assert set(agents) == {"Ann", "Bob"}
    assert (agents["Ann"]["claims"], agents["Ann"]["claim_median_seconds"]) == ("2", "90.0")
    assert agents["Ann"]["claim_p90_seconds"] == "114.0"  # 60 + 0.9 * 60
    assert (agents["Bob"]["claim_median_seconds"], agents["Bob"]["claim_p90_seconds"]) == (
        "390.0",
        "558.0",  # 180 + 0.9 * 420
    )
    assert (agents["Bob"]["contacts"], agents["Bob"]["contact_median_seconds"]) == ("0", "")

    html = client.get(DASHBOARD).content.decode()
    assert "2 min 30 s" in html and "7 min 54 s" in html  # 150 s and 474 s

    # The lead of 40 days ago counts once its day is in the range.
    forty = (timezone.localdate() - timedelta(days=40)).isoformat()
    rows = csv_rows(client.get(export_url("times_by_team"), {"from": forty, "to": forty}))
    assert rows[0]["team"] == "No team"
    assert rows[0]["claim_median_seconds"] == "5.0"


def test_agents_load_now_against_capacity(tenant, owner):
    busy = MembershipFactory(
        tenant=tenant, user__full_name="Busy Bee", capacity=3, current_lead_count=2
    )
    MembershipFactory(tenant=tenant, user__full_name="Gone", is_active=False)
    open_session(tenant, agent=busy)
    open_session(tenant, agent=busy)
    open_session(tenant, agent=busy, status=SessionStatus.CLOSED)

    rows = {r["agent"]: r for r in csv_rows(login(owner.user).get(export_url("load")))}
    assert "Gone" not in rows
    assert rows["Busy Bee"] == {
        "tenant": "Acme",
        "agent": "Busy Bee",
        "email": busy.user.email,
        "role": "member",
        "presence": "Online",
        "open_leads": "2",
        "open_sessions": "2",
        "capacity": "3",
    }
    assert rows[owner.display_name]["capacity"] == ""  # no limit


def test_unassigned_sessions_are_counted_by_reason(tenant, owner):
    for _ in range(3):
        open_session(tenant, reason=UnassignedReason.ALL_AT_CAPACITY)
    open_session(tenant, reason=UnassignedReason.TEAM_CLOSED)
    open_session(tenant, reason=UnassignedReason.TEAM_CLOSED, status=SessionStatus.CLOSED)
    open_session(tenant, agent=owner)

    rows = csv_rows(login(owner.user).get(export_url("unassigned")))
    assert [(r["reason"], r["sessions"]) for r in rows] == [
        ("all_at_capacity", "3"),
        ("team_closed", "1"),
    ]


def test_failed_messages_by_channel_and_the_latest_link_to_the_outbox_admin(tenant, owner):
    for _ in range(2):
        failed_message(tenant, channel="whatsapp")
    latest = failed_message(tenant, channel="email", last_error="=HYPERLINK(evil)")
    failed_message(tenant, channel="email", status=MessageStatus.SENT, last_error="")
    failed_message(tenant, channel="email", status=MessageStatus.PENDING, last_error="")

    client = login(owner.user)
    assert csv_rows(client.get(export_url("failed_by_channel"))) == [
        {"channel": "whatsapp", "failed": "2"},
        {"channel": "email", "failed": "1"},
    ]
    rows = csv_rows(client.get(export_url("failed_latest")))
    assert len(rows) == 3
    assert rows[0]["message_id"] == str(latest.pk)
    assert rows[0]["last_error"] == "'=HYPERLINK(evil)"  # never run as a formula

    html = client.get(DASHBOARD).content.decode()
    assert f'href="/admin/outbox/outboundmessage/{latest.pk}/change/"' in html
    assert "/admin/outbox/outboundmessage/?status__exact=failed&amp;channel__exact=whatsapp" in (
        html
    )
    # The link leads to the rows it counts.
    listing = client.get(
        "/admin/outbox/outboundmessage/?status__exact=failed&channel__exact=whatsapp"
    )
    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 2


def test_an_unknown_chart_is_a_404(tenant, owner):
    assert login(owner.user).get(export_url("nothing")).status_code == 404


# --- cost ------------------------------------------------------------------------------


def _seed(tenant, count: int):
    now = timezone.now()
    team = TeamFactory(tenant=tenant)
    for i in range(count):
        agent = MembershipFactory(tenant=tenant, capacity=5)
        make_lead(tenant, agent, team=team, claim_deadline=now + timedelta(minutes=i % 9))
        make_lead(
            tenant,
            agent,
            team=team,
            status=LeadStatus.CONTACTED,
            assigned_at=now - timedelta(minutes=9),
            claimed_at=now - timedelta(minutes=7),
            contacted_at=now - timedelta(minutes=i % 5),
        )
        open_session(tenant, agent=agent)
        open_session(tenant, reason=UnassignedReason.ALL_AWAY)
        failed_message(tenant, channel=("email", "whatsapp")[i % 2])


def test_the_dashboard_costs_the_same_queries_for_few_or_many_rows(
    tenant, owner, django_assert_max_num_queries
):
    client = login(owner.user)
    counts = []
    for more in (2, 25):
        _seed(tenant, more)
        with CaptureQueriesContext(connection) as page_queries:
            page = client.get(DASHBOARD)
        assert page.status_code == 200
        with CaptureQueriesContext(connection) as fragment_queries:
            assert client.get(FRAGMENT).status_code == 200
        counts.append((len(page_queries), len(fragment_queries)))
    assert len(page.context["charts"]["load"].rows) == 27 + 1  # the agents and the owner
    assert counts[0] == counts[1], f"queries grow with the rows: {counts}"
    # And a fixed budget: the charts' queries plus the admin's session, user and menu.
    with django_assert_max_num_queries(20):
        client.get(DASHBOARD)
    with django_assert_max_num_queries(6):
        client.get(FRAGMENT)


def test_a_tenants_days_are_its_own_time_zones(tenant, owner):
    """A breach at 20:00 UTC is the next morning in India: an Indian tenant's chart counts
    it on that day, and the page says which time zone its days are in."""
    from zoneinfo import ZoneInfo

    tenant.timezone = "Asia/Kolkata"
    tenant.save(update_fields=["timezone"])
    agent = MembershipFactory(tenant=tenant)
    now = timezone.now()
    make_lead(tenant, agent, name="C1", claim_deadline=now - timedelta(minutes=1))
    assert sweep_sla_breaches(now=now)["claim"] == 1
    evening = datetime.combine(now.date() - timedelta(days=3), time(20, 0), tzinfo=UTC)
    ActivityLog.objects.for_tenant(tenant).filter(action="lead.claim_sla_breached").update(
        created_at=evening
    )
    next_morning = evening.astimezone(ZoneInfo("Asia/Kolkata")).date()
    assert next_morning == evening.date() + timedelta(days=1)

    rows = csv_rows(login(owner.user).get(export_url("breaches")))

    by_day = {r["day"]: int(r["claim"]) for r in rows}
    assert by_day[next_morning.isoformat()] == 1
    assert by_day[evening.date().isoformat()] == 0
    page = login(owner.user).get(DASHBOARD).content.decode()
    assert "(days in Asia/Kolkata)" in page
