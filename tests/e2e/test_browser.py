"""Real browser tests: Playwright driving Debian's headless Chromium against live_server.

Screenshots land in test-artifacts/screenshots/. Without /usr/bin/chromium these tests
are skipped with a reason, unless REQUIRE_BROWSER=1 (CI), where that is an error.
"""

import os
import re
from pathlib import Path

import pytest
from django.conf import settings

from core.actor import Actor
from leads.models import Lead, LeadReassignment
from leads.services import create_lead
from teams.models import Role
from tests.factories import TEST_PASSWORD, MembershipFactory, TeamFactory

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOTS = Path(settings.BASE_DIR) / "test-artifacts" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

if not Path(CHROMIUM).exists():
    if os.environ.get("REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install chromium")
    pytestmark.append(
        pytest.mark.skip(reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    )


@pytest.fixture(scope="module", autouse=True)
def _orm_beside_playwright():
    # Playwright's sync API runs an event loop in this thread while this module runs;
    # the ORM calls of the tests (and the database flush after each) are ordinary
    # synchronous code. Restored when the module is done.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="module")
def browser(_orm_beside_playwright):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def phone_page(browser):
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def admin_login(page, live_server, user) -> None:
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", user.email)
    page.fill("#id_password", TEST_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def test_admin_bulk_reassigns_two_leads_and_sees_their_history(page, live_server, tenant, owner):
    first_agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Alice Agent")
    target = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Tom Target")
    for name in ("Lead One", "Lead Two"):
        create_lead(
            tenant=tenant,
            actor=Actor.system(),
            name=name,
            phone="+4400",
            assigned_agent_id=first_agent.pk,
        )

    admin_login(page, live_server, owner.user)
    page.goto(f"{live_server.url}/admin/leads/lead/")
    page.locator("tr", has_text="Lead One").locator("input.action-select").check()
    page.locator("tr", has_text="Lead Two").locator("input.action-select").check()
    page.select_option("select[name=action]", "reassign_selected")
    page.click("button[name=index]")
    page.wait_for_selector("text=Reassign leads")
    page.select_option("#id_to_agent", str(target.pk))
    page.select_option("#id_reason", "unclaimed")
    page.fill("#id_notes", "Alice is at lunch")
    shot(page, "admin-bulk-reassign-form")
    page.click("input[name=apply]")

    page.wait_for_selector("text=Lead One: reassigned to Tom Target")
    assert page.locator("text=Lead Two: reassigned to Tom Target").is_visible()
    shot(page, "admin-bulk-reassign-done")

    page.click('#result_list a:text-is("Lead One")')
    history = page.locator("#reassignments-group")
    history.wait_for()
    assert "Alice is at lunch" in history.inner_text()
    assert "Not claimed in time" in history.inner_text()
    shot(page, "admin-lead-history")
    assert LeadReassignment.objects.for_tenant(tenant).count() == 2
    assert set(Lead.objects.for_tenant(tenant).values_list("assigned_agent", flat=True)) == {
        target.pk
    }


def test_agent_opens_emailed_link_claims_and_marks_contacted(
    phone_page, live_server, tenant, mailoutbox, settings, deliver_outbox
):
    settings.PUBLIC_BASE_URL = live_server.url
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Ana Agent")
    lead = create_lead(
        tenant=tenant,
        actor=Actor.system(),
        name="Grace Hopper",
        phone="+441234567",
        email="grace@example.test",
        source="website",
        assigned_agent_id=agent.pk,
    )
    deliver_outbox()
    email = next(m for m in mailoutbox if agent.user.email in m.to)
    link = re.search(rf"{re.escape(live_server.url)}/leads/[0-9a-f-]+/", email.body).group(0)
    assert str(lead.pk) in link

    page = phone_page
    page.goto(link)
    page.wait_for_selector("#id_username")  # the login page, keeping the link as "next"
    page.fill("#id_username", agent.user.email)
    page.fill("#id_password", TEST_PASSWORD)
    page.click("button[type=submit]")

    page.wait_for_selector("text=Grace Hopper")
    from playwright.sync_api import expect

    countdown = page.locator("[data-testid=countdown]")
    # The page says "--:--" until its script has run once.
    expect(countdown).to_have_text(re.compile(r"^[45]:\d\d$"))
    shot(page, "agent-lead-page-phone")

    page.click("button:has-text('Claim')")
    page.wait_for_selector("text=Claimed. The contact window has started.")
    assert page.locator("[data-testid=status]").inner_text() == "claimed"
    shot(page, "agent-lead-claimed-phone")

    page.click("button:has-text('Mark contacted')")
    page.wait_for_selector("text=Marked as contacted.")
    assert page.locator("[data-testid=status]").inner_text() == "contacted"
    shot(page, "agent-lead-contacted-phone")
    lead.refresh_from_db()
    assert lead.status == "contacted" and lead.contacted_at is not None


def test_tenant_a_admin_is_refused_tenant_b_lead(page, live_server, tenant, owner, other_tenant):
    foreign_agent = MembershipFactory(tenant=other_tenant, role=Role.MEMBER)
    foreign = create_lead(
        tenant=other_tenant,
        actor=Actor.system(),
        name="Secret Lead",
        phone="+1",
        assigned_agent_id=foreign_agent.pk,
    )

    admin_login(page, live_server, owner.user)
    page.goto(f"{live_server.url}/admin/leads/lead/{foreign.pk}/change/")
    page.wait_for_selector(".messagelist")
    assert "exist" in page.locator(".messagelist").inner_text()
    assert "Secret Lead" not in page.content()
    shot(page, "admin-refused-other-tenant")

    response = page.goto(f"{live_server.url}/admin/leads/lead/{foreign.pk}/reassign/")
    assert response.status == 404
    response = page.goto(f"{live_server.url}/leads/{foreign.pk}/")
    assert response.status == 404
    foreign.refresh_from_db()
    assert foreign.reassignment_count == 0


# --- under the Content-Security-Policy ------------------------------------------------


@pytest.fixture
def csp_violations(page):
    """What Chromium refused because of the CSP (it says so on the console)."""
    refused = []
    page.on(
        "console",
        lambda message: (
            refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return refused


def test_the_admin_works_under_the_content_security_policy(
    page, live_server, csp_violations, tenant, owner
):
    superuser = MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN).user
    superuser.is_superuser = superuser.is_staff = True
    superuser.save()
    admin_login(page, live_server, superuser)
    assert "content-security-policy" in page.goto(f"{live_server.url}/admin/").headers

    # The slug fills itself from the name: the admin's own scripts run.
    page.goto(f"{live_server.url}/admin/teams/tenant/add/")
    page.fill("#id_name", "Acme Widgets")
    page.locator("#id_slug").click()
    assert page.input_value("#id_slug") == "acme-widgets"
    shot(page, "csp-admin-tenant-add")

    # The changelist's select-all box and action bar are scripted too (tenants have no
    # actions: they are deactivated, not deleted).
    TeamFactory(tenant=tenant, name="Sales")
    page.goto(f"{live_server.url}/admin/teams/team/")
    page.check("#action-toggle")
    page.wait_for_selector(".action-counter:has-text('selected')")
    assert "1 of 1 selected" in page.locator(".action-counter").inner_text() or (
        "selected" in page.locator(".action-counter").inner_text()
    )

    assert csp_violations == []


def test_swagger_ui_renders_the_api_under_the_content_security_policy(
    page, live_server, csp_violations
):
    response = page.goto(f"{live_server.url}/api/docs/")
    assert "script-src 'self'" in response.headers["content-security-policy"]

    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/handover" in p for p in paths), paths
    shot(page, "csp-swagger-ui")

    assert csp_violations == []


def test_the_agent_countdown_ticks_under_the_content_security_policy(
    page, live_server, csp_violations, tenant
):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    lead = create_lead(
        tenant=tenant, actor=Actor.system(), name="Ada", phone="+44", assigned_agent_id=agent.pk
    )
    page.goto(f"{live_server.url}/leads/{lead.pk}/")
    page.fill("#id_username", agent.user.email)
    page.fill("#id_password", TEST_PASSWORD)
    page.click("button[type=submit]")

    countdown = page.locator("[data-testid=countdown]")
    first = countdown.inner_text()
    page.wait_for_function(
        "(first) => document.querySelector('[data-testid=countdown]').textContent !== first",
        arg=first,
    )
    assert re.fullmatch(r"[45]:\d\d", countdown.inner_text())
    assert csp_violations == []
