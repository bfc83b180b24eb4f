"""Every admin list fits a 1366 px laptop screen with the navigation sidebar open.

Rows with long names are seeded for every model the admin lists; then a real Chromium
opens each changelist (taken from the admin's own registry, so a model added later is
measured too) and checks the results table is no wider than the area it sits in: no
horizontal scrolling, no cut-off column. Screenshots land in
test-artifacts/screenshots/admin-list-<app>-<model>.png.
"""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth.models import Group
from django.utils import timezone

from core.actor import Actor
from inbox.models import InboxSession
from inbox.services import handover
from leads.models import Lead, LeadReassignment, Notification, NotificationKind
from leads.services import create_lead, reassign_lead
from outbox.models import OutboundMessage
from teams.models import ApiKey, Role, TeamRole
from teams.services import create_api_key
from tests.e2e.test_browser import (  # noqa: F401  (fixtures)
    _orm_beside_playwright,
    admin_login,
    browser,
    shot,
)
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    TeamScheduleFactory,
    TenantFactory,
)
from tests.inbox.factories import CrmIntegrationFactory
from webhooks.models import WebhookAttempt
from webhooks.services import create_endpoint

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SYSTEM = Actor.system()
LONG = "Maximilian Alexander Featherstonehaugh-Worthington"


@pytest.fixture
def wide_page(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def seed_every_list():
    """A few rows, with long names and texts, for every model the admin lists."""
    first = TenantFactory(name="Northwind Traders International Holdings GmbH", slug="northwind")
    second = TenantFactory(name="Contoso Pharmaceuticals Europe Limited", slug="contoso")
    root = MembershipFactory(
        tenant=first,
        role=Role.SUPER_ADMIN,
        user__full_name="Rootina Superuser-Administrator",
        user__email="rootina.superuser-administrator@northwind-traders.example",
        user__is_staff=True,
        user__is_superuser=True,
    ).user
    for tenant in (first, second):
        alice = MembershipFactory(
            tenant=tenant,
            user__full_name=f"Alice {LONG}",
            user__email=f"alice.featherstonehaugh-worthington@{tenant.slug}-sales.example",
            capacity=5,
        )
        bob = MembershipFactory(tenant=tenant, user__full_name=f"Bob {LONG}")
        team = TeamFactory(tenant=tenant, name="Enterprise Accounts Escalation Team EMEA")
        TeamMemberFactory(
            tenant=tenant,
            team=team,
            membership=alice,
            role=TeamRole.objects.create(
                tenant=tenant,
                name="Senior escalation specialist",
                description="Takes over the conversations nobody else could close " * 3,
            ),
        )
        TeamScheduleFactory(tenant=tenant, team=team, timezone="America/Argentina/Buenos_Aires")
        AssignmentConfigFactory(tenant=tenant)
        create_api_key(tenant=tenant, name="Production website contact form (main)", actor=SYSTEM)
        CrmIntegrationFactory(
            tenant=tenant,
            name="Primary WhatsApp Business CRM integration",
            api_url="https://crm.very-long-subdomain.northwind-traders.example/api/v2/",
        )
        endpoint, _ = create_endpoint(
            tenant=tenant,
            actor=SYSTEM,
            url="https://hooks.very-long-subdomain.example/services/T000/B000/XXXXXXXXXXXXXXXX",
            events=["lead.created", "lead.reassigned", "lead.sla_breached"],
            description="Sales channel in the chat tool",
            is_active=True,
        )
        WebhookAttempt.objects.create(
            tenant=tenant,
            endpoint=endpoint,
            webhook_id="msg_2aBcDeFgHiJkLmNoPqRsTuVwXyZ",
            event_type="lead.sla_breached",
            attempted_at=timezone.now(),
            status_code=502,
            duration_ms=10_000,
            error="Connection reset by peer while reading the response headers " * 3,
        )
        for n in range(3):
            lead = create_lead(
                tenant=tenant,
                actor=SYSTEM,
                name=f"{LONG} the {n + 1}th",
                phone="+4915112345678",
                email=f"lead{n}.featherstonehaugh@example.test",
                source="website contact form",
                assigned_agent_id=alice.pk,
            )
        reassign_lead(
            tenant=tenant,
            lead_id=lead.pk,
            to_agent_id=bob.pk,
            reason="manual",
            notes="Alice is at a customer workshop all afternoon " * 3,
            reassigned_by=None,
            actor=SYSTEM,
        )
        Lead.objects.for_tenant(tenant).filter(pk=lead.pk).update(
            claim_deadline=timezone.now() - timedelta(minutes=3),
            claim_sla_breached_at=timezone.now(),
        )
        Notification.objects.create(
            tenant=tenant,
            recipient=alice,
            lead=lead,
            kind=NotificationKind.CLAIM_SLA_BREACHED,
            title=f"Lead not claimed in time: {LONG}",
        )
        handover(
            tenant=tenant,
            actor=SYSTEM,
            contact_id="4915112345678901",
            name=f"Dr. {LONG}",
            channel="whatsapp",
            idempotency_key="handover-key-0123456789abcdef0123456789abcdef",
            payload_for_idempotency={"contactId": "4915112345678901"},
        )
    Group.objects.create(name="Regional sales managers with export rights")
    for model in (AccessAttempt, AccessLog, AccessFailureLog):
        fields = {f.name for f in model._meta.fields}
        row = {
            # Not the admin who logs in below: a successful login clears its attempts.
            "username": "mallory.password-guesser@very-long-domain-name.example",
            "ip_address": "2001:db8:85a3::8a2e:370:7334",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131 " * 2,
            "path_info": "/admin/login/",
            "http_accept": "text/html,application/xhtml+xml",
            "failures_since_start": 3,
            "get_data": "",
            "post_data": "username=rootina",
            "locked_out": True,
        }
        model.objects.create(**{k: v for k, v in row.items() if k in fields})
    return root


def overflow(page) -> dict:
    return page.evaluate(
        """() => {
            const table = document.querySelector('#result_list');
            const box = table.closest('.results') || table.parentElement;
            return {table: table.scrollWidth, box: box.clientWidth,
                    rows: table.querySelectorAll('tbody tr').length};
        }"""
    )


def test_every_admin_list_fits_1366px_with_the_sidebar_open(wide_page, live_server):
    root = seed_every_list()
    assert LeadReassignment.all_tenants.exists() and OutboundMessage.all_tenants.exists()
    assert InboxSession.all_tenants.exists() and ApiKey.all_tenants.exists()
    page = wide_page
    admin_login(page, live_server, root)

    too_wide, empty = [], []
    for model in admin.site._registry:
        meta = model._meta
        page.goto(f"{live_server.url}/admin/{meta.app_label}/{meta.model_name}/")
        page.wait_for_selector("#changelist")
        # Django opens the sidebar by default on a wide screen; it must be open here.
        assert page.locator("#nav-sidebar").is_visible(), f"{meta.label}: sidebar closed"
        if page.locator("#result_list").count() == 0:
            empty.append(meta.label)
            continue
        size = overflow(page)
        shot(page, f"admin-list-{meta.app_label}-{meta.model_name}")
        if size["rows"] == 0:
            empty.append(meta.label)
        if size["table"] > size["box"]:
            too_wide.append(f"{meta.label}: table {size['table']} px in {size['box']} px")

    assert too_wide == [], "lists wider than their area at 1366 px:\n" + "\n".join(too_wide)
    assert empty == [], f"seed rows for these lists so they are measured: {empty}"


def test_the_pick_an_agent_and_routing_pages_read_as_tables(wide_page, live_server):
    root = seed_every_list()
    page = wide_page
    admin_login(page, live_server, root)
    lead = Lead.all_tenants.filter(claim_sla_breached_at__isnull=False).first()
    session = InboxSession.all_tenants.first()

    page.goto(f"{live_server.url}/admin/leads/lead/{lead.pk}/reassign/")
    labels = page.locator("#id_to_agent option").all_inner_texts()
    assert lead.assigned_agent.display_name not in " ".join(labels)
    assert any(label.endswith(" — 2 leads / cap 5") for label in labels), labels
    assert page.locator("a.cancel-link", has_text="Cancel").is_visible()
    shot(page, "admin-reassign-one-lead")

    page.goto(f"{live_server.url}/admin/leads/lead/{lead.pk}/change/")
    history = page.locator("#reassignments-group")
    assert "→ Bob" in history.inner_text()
    shot(page, "admin-lead-reassignment-history")

    for url, name in (
        (f"/admin/inbox/inboxsession/{session.pk}/change/", "admin-session-routing-attempt"),
        (f"/admin/inbox/inboxsession/{session.pk}/why-unassigned/", "admin-session-why"),
    ):
        page.goto(f"{live_server.url}{url}")
        table = page.locator("table.routing-attempt")
        assert table.is_visible(), url
        assert "Round robin" in table.inner_text()
        assert "{" not in page.locator("#content-main").inner_text(), f"raw JSON on {url}"
        shot(page, name)
