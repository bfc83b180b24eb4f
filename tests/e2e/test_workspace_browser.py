"""The agent pages in a real browser (issue 13's acceptance): accept, close, transfer,
the presence switch, and conversations and notices arriving without a reload, on a
laptop (1366 px) and a phone (390 px), under the Content-Security-Policy.

Work is created server-side while the page is open, as a handover or an SLA sweep
would; the page must show it within 5 s on its own. Screenshots land in
test-artifacts/screenshots/ (kept by CI).
"""

import os
import re
from pathlib import Path

import pytest

from core.actor import Actor
from inbox.models import InboxSession, SessionStatus
from inbox.services import handover
from leads.models import Notification, NotificationKind
from teams.models import Membership, Presence, PresenceSource, Role
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_FLAGS, shot
from tests.factories import TEST_PASSWORD, MembershipFactory, TeamFactory, TeamMemberFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

if not Path(CHROMIUM).exists():
    if os.environ.get("REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install chromium")
    pytestmark.append(
        pytest.mark.skip(reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    )

WITHIN = 5_000  # ms: "without a reload within 5 s"

VIEWPORTS = {
    "desktop": {"viewport": {"width": 1366, "height": 900}},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls of the
    # tests (creating work while the page is open) are ordinary synchronous code.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(params=sorted(VIEWPORTS))
def device(request):
    return request.param


@pytest.fixture
def page(browser, device):
    context = browser.new_context(**VIEWPORTS[device])
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.csp_violations = []
    page.on(
        "console",
        lambda message: (
            page.csp_violations.append(message.text)
            if "Content Security Policy" in message.text
            else None
        ),
    )
    yield page
    context.close()


def login(page, live_server, membership, path):
    page.goto(f"{live_server.url}{path}")
    page.fill("#id_username", membership.user.email)
    page.fill("#id_password", TEST_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1")


def new_conversation(tenant, contact, **context):
    """A handover as the bot makes it: the engine routes it to the online agent."""
    outcome = handover(
        tenant=tenant,
        actor=Actor.system(),
        contact_id=f"+49{abs(hash(contact)) % 10**9}",
        channel="whatsapp",
        name=contact,
        context=context,
        send_message=False,
    )
    return InboxSession.objects.for_tenant(tenant).get(pk=outcome.body["sessionId"])


def row(page, contact):
    return page.locator("[data-testid=conversation]", has_text=contact)


def unread(page) -> str:
    return page.locator("[data-testid=unread-count]").inner_text()


@pytest.fixture
def workplace(tenant):
    tenant.session_accept_window_minutes = 10
    tenant.save()
    ana = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Ana Agent")
    # Away: new conversations go to Ana; a person may still transfer one to Tom.
    tom = MembershipFactory(
        tenant=tenant, role=Role.MEMBER, user__full_name="Tom Teammate", presence=Presence.AWAY
    )
    return ana, tom


def test_conversations_arrive_tick_and_are_accepted_transferred_and_closed(
    page, device, live_server, tenant, workplace
):
    ana, tom = workplace
    login(page, live_server, ana, "/conversations/")
    page.wait_for_selector("text=No open conversations")
    assert unread(page) == "0"

    # A handover while the page is open: the row and its notice appear without a reload.
    grace = new_conversation(tenant, "Grace Hopper", summary="Wants to change her address")
    assert grace.assigned_agent_id == ana.pk
    assert grace.accept_deadline is not None, "the handover starts the accept window"
    row(page, "Grace Hopper").wait_for(timeout=WITHIN)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=unread-count]').textContent === '1'",
        timeout=WITHIN,
    )
    assert "Wants to change her address" in row(page, "Grace Hopper").inner_text()

    # The accept deadline counts down, the waiting time counts up.
    countdown = row(page, "Grace Hopper").locator("[data-testid=accept-countdown]")
    first = countdown.inner_text()
    assert re.fullmatch(r"(9|10):\d\d", first), first
    page.wait_for_function(
        "(first) => document.querySelector('[data-testid=accept-countdown]').textContent !== first",
        arg=first,
    )
    assert re.fullmatch(
        r"0:\d\d", row(page, "Grace Hopper").locator("[data-testid=waiting]").inner_text()
    )
    shot(page, f"workspace-conversation-arrived-{device}")

    row(page, "Grace Hopper").locator("button:has-text('Accept')").click()
    page.wait_for_selector("text=Accepted: Grace Hopper is yours.")
    assert row(page, "Grace Hopper").locator("[data-testid=accepted]").is_visible()
    grace.refresh_from_db()
    assert grace.accepted_at is not None and grace.accept_deadline is None
    shot(page, f"workspace-conversation-accepted-{device}")

    # A second one arrives; Ana hands it to Tom.
    new_conversation(tenant, "Alan Turing", orderId="A-17")
    alan = row(page, "Alan Turing")
    alan.wait_for(timeout=WITHIN)
    alan.locator("select").select_option(label="Tom Teammate (away)")
    shot(page, f"workspace-transfer-chosen-{device}")
    alan.locator("button:has-text('Transfer')").click()
    page.wait_for_selector("text=Transferred the conversation with Alan Turing.")
    assert row(page, "Alan Turing").count() == 0
    moved = InboxSession.objects.for_tenant(tenant).get(contact_name="Alan Turing")
    assert moved.assigned_agent_id == tom.pk

    row(page, "Grace Hopper").locator("button:has-text('Close')").click()
    page.wait_for_selector("text=Closed the conversation with Grace Hopper.")
    assert page.locator("[data-testid=conversation]").count() == 0
    grace.refresh_from_db()
    assert grace.status == SessionStatus.CLOSED
    shot(page, f"workspace-conversations-done-{device}")
    assert page.csp_violations == []


def test_a_transfer_to_a_team_goes_through_the_engine(page, device, live_server, tenant, workplace):
    ana, _ = workplace
    support = TeamFactory(tenant=tenant, name="Support")
    sam = TeamMemberFactory(
        team=support, tenant=tenant, membership__presence=Presence.AWAY
    ).membership
    session = new_conversation(tenant, "Ada Lovelace")
    assert session.assigned_agent_id == ana.pk  # the only one online
    Membership.objects.for_tenant(tenant).filter(pk=sam.pk).update(presence=Presence.ONLINE)
    login(page, live_server, ana, "/conversations/")

    row(page, "Ada Lovelace").locator("select").select_option(label="Support")
    row(page, "Ada Lovelace").locator("button:has-text('Transfer')").click()

    page.wait_for_selector("text=Transferred the conversation with Ada Lovelace.")
    session.refresh_from_db()
    assert session.assigned_agent_id == sam.pk
    shot(page, f"workspace-transferred-to-team-{device}")
    assert page.csp_violations == []


def test_presence_switch_and_notices_arriving_without_a_reload(
    page, device, live_server, tenant, workplace
):
    ana, _ = workplace
    login(page, live_server, ana, "/notifications/")
    page.wait_for_selector("text=No notices")
    assert page.locator("[data-testid=presence] button[aria-pressed=true]").inner_text() == (
        "Online"
    )

    page.locator("[data-testid=presence] button:has-text('Away')").click()
    page.wait_for_selector("text=You are away.")
    assert page.locator("[data-testid=presence] button[aria-pressed=true]").inner_text() == "Away"
    ana.refresh_from_db()
    assert (ana.presence, ana.presence_source) == (Presence.AWAY, PresenceSource.PAGE)
    shot(page, f"workspace-presence-away-{device}")

    # An SLA sweep writes a notice while the page is open: the header count and the
    # list change within 5 s, no reload.
    Notification.objects.for_tenant(tenant).create(
        recipient=ana, kind=NotificationKind.LEAD_ASSIGNED, title="New lead: Marie Curie"
    )
    page.wait_for_function(
        "() => document.querySelector('[data-testid=unread-count]').textContent === '1'",
        timeout=WITHIN,
    )
    page.locator("[data-testid=notice]", has_text="New lead: Marie Curie").wait_for(timeout=WITHIN)
    shot(page, f"workspace-notice-arrived-{device}")

    page.click("button:has-text('Mark read')")
    page.wait_for_selector("[data-testid=notice]:not(.unread)")
    assert unread(page) == "0"

    page.locator("[data-testid=presence] button:has-text('Online')").click()
    page.wait_for_selector("text=You are online.")
    ana.refresh_from_db()
    assert ana.presence == Presence.ONLINE and ana.last_seen_at is not None

    page.click("button:has-text('Log out')")
    page.wait_for_load_state()
    page.wait_for_function("() => !document.querySelector('[data-testid=presence]')")
    ana.refresh_from_db()
    assert ana.presence == Presence.OFFLINE
    assert Membership.objects.for_tenant(tenant).get(pk=ana.pk).presence_source == "page"
    assert page.csp_violations == []
