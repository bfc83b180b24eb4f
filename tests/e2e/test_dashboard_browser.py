"""The SLA dashboard in a real Chromium, on a 1366 px laptop screen with the admin's
navigation sidebar open: it renders under the CSP, fits the screen, and its list of
leads at risk refreshes itself without a reload. Screenshots land in
test-artifacts/screenshots/sla-dashboard-*.png.
"""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from inbox.models import InboxSession
from leads.models import Lead, LeadStatus
from leads.services import sweep_sla_breaches
from outbox.models import MessageStatus, OutboundMessage
from teams.models import Role
from tests.e2e.test_browser import (  # noqa: F401  (fixtures)
    _orm_beside_playwright,
    admin_login,
    browser,
    shot,
)
from tests.factories import MembershipFactory, TeamFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG = "Maximilian Alexander Featherstonehaugh-Worthington"


@pytest.fixture
def wide_page(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(15_000)
    refused = []
    page.on(
        "console",
        lambda message: (
            refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.csp_violations = refused
    yield page
    context.close()


def lead(tenant, agent, **fields):
    fields.setdefault("phone", "+100")
    fields.setdefault("assigned_at", timezone.now())
    return Lead.objects.for_tenant(tenant).create(assigned_agent=agent, **fields)


def seed(tenant):
    """Something for every chart, with long names."""
    now = timezone.now()
    team = TeamFactory(tenant=tenant, name=f"{LONG} team")
    agents = [
        MembershipFactory(
            tenant=tenant,
            user__full_name=f"{LONG} {i}",
            capacity=3,
            current_lead_count=i,
        )
        for i in range(4)
    ]
    # A breach for the chart, recorded by the sweep before the leads at risk exist.
    lead(tenant, agents[0], name="Breached lead", claim_deadline=now - timedelta(minutes=30))
    sweep_sla_breaches(now=now)
    for i, agent in enumerate(agents):
        lead(
            tenant,
            agent,
            team=team,
            name=f"{LONG} lead {i}",
            claim_deadline=now + timedelta(minutes=i * 3 - 4),
        )
        lead(
            tenant,
            agent,
            team=team,
            name=f"Contacted {i}",
            status=LeadStatus.CONTACTED,
            assigned_at=now - timedelta(minutes=20),
            claimed_at=now - timedelta(minutes=18 - i),
            contacted_at=now - timedelta(minutes=10 - i),
        )
        InboxSession.objects.for_tenant(tenant).create(
            contact_id=uuid.uuid4().hex, assigned_agent=agent
        )
        InboxSession.objects.for_tenant(tenant).create(
            contact_id=uuid.uuid4().hex, unassigned_reason="all_at_capacity"
        )
        OutboundMessage.objects.for_tenant(tenant).create(
            channel=("email", "whatsapp")[i % 2],
            kind="lead_notification",
            target=f"{LONG.lower().replace(' ', '.')}@example.test",
            idempotency_key=uuid.uuid4().hex,
            status=MessageStatus.FAILED,
            next_attempt_at=now,
            # One long word, as a provider's URL or token can be: it must wrap.
            last_error="550 mailbox unavailable https://mx.example.test/" + "x" * 180,
        )
    return agents


def no_horizontal_overflow(page) -> bool:
    return page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )


def test_the_dashboard_renders_fits_and_refreshes_the_leads_at_risk_by_itself(
    wide_page, live_server, tenant, owner
):
    page = wide_page
    agents = seed(tenant)
    admin_login(page, live_server, owner.user)

    # The index's link leads to it.
    page.click("text=SLA dashboard")
    page.wait_for_selector("[data-testid=at-risk-table]")
    assert page.locator("#nav-sidebar").is_visible(), "the navigation sidebar is open"
    for section in ("breaches", "times_by_team", "times_by_agent", "load", "unassigned", "failed"):
        assert page.locator(f"[data-testid={section}] svg.chart").count() == 1, section
    at_risk = page.locator("[data-testid=at-risk-table]").inner_text()
    assert "min late" in at_risk and "min left" in at_risk
    assert no_horizontal_overflow(page), "the dashboard scrolls sideways at 1366 px"
    shot(page, "sla-dashboard")

    # Data changes; the list shows it within one refresh, and the page was not reloaded.
    page.evaluate("window.notReloaded = true")
    lead(
        tenant,
        agents[1],
        name="Fresh Urgent Lead",
        claim_deadline=timezone.now() + timedelta(minutes=2, seconds=30),
    )
    try:
        page.wait_for_function(
            "() => document.querySelector('[data-testid=at-risk-table]').innerText"
            ".includes('Fresh Urgent Lead')",
            timeout=25_000,
        )
    except PlaywrightTimeoutError:
        pytest.fail("The list of leads at risk did not show the new lead within 25 s.")
    row = page.locator("[data-testid=at-risk-table] tr", has_text="Fresh Urgent Lead")
    assert row.locator("[data-testid=time-left]").inner_text() in ("2 min left", "1 min left")
    assert page.evaluate("window.notReloaded === true"), "the page reloaded"
    assert no_horizontal_overflow(page)
    shot(page, "sla-dashboard-refreshed")

    # A lead's link opens its admin page.
    row.locator("a").click()
    page.wait_for_selector("text=Change lead")

    assert page.csp_violations == []


def test_the_dashboard_fits_with_several_tenants_and_says_what_is_wrong_with_a_filter(
    wide_page, live_server, tenant, other_tenant
):
    page = wide_page
    seed(tenant)
    seed(other_tenant)
    superuser = MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN).user
    superuser.is_superuser = superuser.is_staff = True
    superuser.save()
    admin_login(page, live_server, superuser)

    page.goto(f"{live_server.url}/admin/dashboard/")
    page.wait_for_selector("[data-testid=at-risk-table]")
    assert "Globex" in page.locator("[data-testid=at-risk-table]").inner_text()
    assert no_horizontal_overflow(page)
    shot(page, "sla-dashboard-all-tenants")

    page.select_option("#id_tenant", str(tenant.pk))
    page.fill("#id_from", "2026-02-10")
    page.fill("#id_to", "2026-02-01")
    page.click("input[value=Apply]")
    page.wait_for_selector(".errorlist-inline")
    assert "after the end date" in page.locator(".errorlist-inline").inner_text()
    assert no_horizontal_overflow(page)
    shot(page, "sla-dashboard-bad-filter")
    assert page.csp_violations == []
