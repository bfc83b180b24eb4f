"""One door for every change: every save, delete and action of the Django admin writes
exactly one activity row, naming the person who acted and "admin" as how.

The test walks `admin.site._registry`, so a model or an action registered later without
a service fails here until it gets a case below (or an exemption with its reason).
"""

from dataclasses import dataclass
from datetime import date

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import transaction
from django.forms import CheckboxInput
from django.test import Client, RequestFactory
from django.urls import reverse

from audit.models import ActivityLog
from core.actor import Actor
from inbox.models import CrmIntegration
from inbox.services import handover
from leads.services import create_lead
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import queue_message
from teams.models import Role, TeamRole
from teams.services import action_noun, create_api_key
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    TeamScheduleFactory,
    TenantFactory,
    UserFactory,
)
from webhooks.models import WebhookAttempt
from webhooks.services import create_endpoint, send_test_event

pytestmark = pytest.mark.django_db

# Admins that change nothing a tenant owns, so they write no tenant activity row.
EXEMPT = {
    "auth.Group": "global permission groups: no tenant; Django's admin history records it",
    "axes.AccessAttempt": "login lockout bookkeeping of django-axes: no tenant",
    "axes.AccessLog": "login log of django-axes: read-only, no tenant",
    "axes.AccessFailureLog": "login failure log of django-axes: read-only, no tenant",
    "teams.User": "global accounts (one user, many tenants): no tenant to record it under; "
    "Django's admin history records it",
    "audit.ActivityLog": "the audit log itself: read-only",
    "outbox.OutboundMessage": "read-only delivery records (its action is covered below)",
    "inbox.HandoverRequest": "read-only idempotency records of handover requests",
    "leads.Notification": "read-only: notifications are written by the lead services",
    "webhooks.WebhookAttempt": "read-only delivery attempts (its action is covered below)",
    "leads.LeadReassignment": "read-only history written by the reassign service",
    "inbox.InboxSession": "sessions change only through its actions (covered below)",
}
# Actions of exempt admins that change no tenant data.
EXEMPT_ACTIONS = {
    ("axes.AccessAttempt", "cleanup_expired_attempts"): "lockout bookkeeping, no tenant",
    ("teams.User", "unlock_login"): "lockout bookkeeping of a global account, no tenant",
    ("auth.Group", "delete_selected"): "global permission groups, no tenant",
    ("teams.User", "delete_selected"): "global accounts, no tenant",
    ("axes.AccessAttempt", "delete_selected"): "lockout bookkeeping, no tenant",
    ("axes.AccessLog", "delete_selected"): "login log, no tenant",
    ("axes.AccessFailureLog", "delete_selected"): "login log, no tenant",
}


def _failed_email(tenant) -> OutboundMessage:
    with transaction.atomic():
        message = queue_message(
            tenant=tenant, channel="email", kind="test.email", target="a@example.test", payload={}
        )
    OutboundMessage.all_tenants.filter(pk=message.pk).update(status=MessageStatus.FAILED)
    return message


@pytest.fixture
def world(tenant, owner):
    system = Actor.system()
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__email="ann@example.test")
    lead = create_lead(
        tenant=tenant, actor=system, name="Alpha Lead", phone="+100", assigned_agent_id=agent.pk
    )
    session = handover(
        tenant=tenant, actor=system, contact_id="c-1", channel="whatsapp", send_message=False
    )
    endpoint, _ = create_endpoint(tenant=tenant, actor=system, url="https://127.0.0.1/in")
    event = send_test_event(tenant=tenant, actor=system, endpoint_id=endpoint.pk)
    attempt = WebhookAttempt.objects.create(
        tenant=tenant,
        endpoint=endpoint,
        message=event,
        webhook_id="msg_1",
        event_type="webhook.test",
        attempted_at=event.created_at,
        status_code=500,
    )
    team = TeamFactory(tenant=tenant, name="Sales")
    member = TeamMemberFactory(team=team, membership=agent)
    role = TeamRole.objects.create(tenant=tenant, name="Closer")
    schedule = TeamScheduleFactory(team=TeamFactory(tenant=tenant, name="Night shift"))
    config = AssignmentConfigFactory(tenant=tenant)
    key, _ = create_api_key(tenant=tenant, name="Zapier", actor=Actor.system())
    crm = CrmIntegration.objects.create(tenant=tenant, name="Acme CRM", api_url="")
    return {
        "tenant": tenant,
        "owner": owner,
        "agent": agent,
        "team": team,
        "member": member,
        "role": role,
        "schedule": schedule,
        "config": config,
        "api_key": key,
        "crm": crm,
        "lead": lead,
        "session_id": session.body["sessionId"],
        "endpoint": endpoint,
        "attempt": attempt,
        "failed_email": _failed_email(tenant),
    }


@pytest.fixture(params=["tenant_admin", "superuser"])
def person(request, owner):
    if request.param == "tenant_admin":
        return owner.user
    return UserFactory(email="root@example.test", is_staff=True, is_superuser=True)


@dataclass
class FormCase:
    """How to add, change and delete one model's rows through its admin form."""

    instance: callable  # world -> the row to change and to delete
    add: callable  # (world, data) -> None: fill a blank add form
    change: callable  # (world, data) -> None: make a visible change
    may_delete: bool = True
    # A row with no history to delete (agents with leads and endpoints with deliveries
    # are deactivated instead: the admin refuses to cascade into read-only history).
    disposable: callable = None
    action_prefix: str = ""  # the model's activity prefix when not its snake-case name


def _set(**values):
    def fill(world, data):
        for key, value in values.items():
            data[key] = value(world) if callable(value) else value

    return fill


def _add_inline_row(prefix, **values):
    """Append one row to an inline formset of the posted data."""

    def fill(world, data):
        index = int(data[f"{prefix}-TOTAL_FORMS"])
        data[f"{prefix}-TOTAL_FORMS"] = str(index + 1)
        for key, value in values.items():
            data[f"{prefix}-{index}-{key}"] = value(world) if callable(value) else value

    return fill


def _both(*fills):
    def fill(world, data):
        for f in fills:
            f(world, data)

    return fill


def _new_agent_user(world):
    """A user the tenant admin may pick: an agent of another tenant the admin also runs."""
    side = TenantFactory(name="Side", slug="side")
    MembershipFactory(tenant=side, user=world["owner"].user, role=Role.ADMIN)
    return str(MembershipFactory(tenant=side, user__email="new.agent@example.test").user.pk)


FORM_CASES = {
    "teams.Tenant": FormCase(
        instance=lambda w: w["tenant"],
        add=_set(name="Initech", slug="initech", timezone="UTC"),
        change=_both(
            _set(claim_window_minutes="7"),
            _add_inline_row(
                "memberships", user=_new_agent_user, role="member", presence="online", capacity="3"
            ),
        ),
        may_delete=False,  # a tenant is deactivated: deleting would erase its audit trail
    ),
    "teams.Membership": FormCase(
        instance=lambda w: w["agent"],
        add=_set(tenant=lambda w: str(w["tenant"].pk), user=_new_agent_user, role="member"),
        change=_set(capacity="9"),
        disposable=lambda w: MembershipFactory(tenant=w["tenant"]),
    ),
    "teams.Team": FormCase(
        instance=lambda w: w["team"],
        add=_set(tenant=lambda w: str(w["tenant"].pk), name="Support"),
        change=_both(
            _set(description="Inbound sales"),
            _add_inline_row("members", membership=lambda w: str(w["owner"].pk)),
        ),
    ),
    "teams.TeamRole": FormCase(
        instance=lambda w: w["role"],
        add=_set(tenant=lambda w: str(w["tenant"].pk), name="Opener"),
        change=_set(description="Closes deals"),
    ),
    "teams.TeamMember": FormCase(
        instance=lambda w: w["member"],
        add=_set(
            tenant=lambda w: str(w["tenant"].pk),
            team=lambda w: str(w["team"].pk),
            membership=lambda w: str(w["owner"].pk),
        ),
        change=_set(role=lambda w: str(w["role"].pk)),
    ),
    "teams.TeamSchedule": FormCase(
        instance=lambda w: w["schedule"],
        add=_set(
            tenant=lambda w: str(w["tenant"].pk),
            team=lambda w: str(w["team"].pk),
            timezone="UTC",
        ),
        change=_both(
            _add_inline_row("hours", weekday="0", opens_at="09:00", closes_at="17:00"),
            _add_inline_row("holidays", date=str(date(2030, 12, 25)), name="Christmas"),
        ),
    ),
    "teams.AssignmentConfig": FormCase(
        instance=lambda w: w["config"],
        add=_set(
            tenant=lambda w: str(w["tenant"].pk),
            team=lambda w: str(w["team"].pk),
            strategy="round_robin",
            settings='{"waterfall": ["team", "admin"]}',
        ),
        change=_set(strategy="least_busy"),
    ),
    "teams.ApiKey": FormCase(
        instance=lambda w: w["api_key"],
        add=_set(tenant=lambda w: str(w["tenant"].pk), name="Make.com"),
        change=_set(name="Zapier (prod)"),
    ),
    "inbox.CrmIntegration": FormCase(
        instance=lambda w: w["crm"],
        add=_set(tenant=lambda w: str(w["tenant"].pk), name="Other CRM"),
        change=_set(api_key="crm-secret-123", api_url="https://crm.example.com"),
    ),
    "webhooks.WebhookEndpoint": FormCase(
        instance=lambda w: w["endpoint"],
        add=_set(tenant=lambda w: str(w["tenant"].pk), url="https://127.0.0.1/other"),
        change=_set(description="Zapier hook"),
        disposable=lambda w: create_endpoint(
            tenant=w["tenant"], actor=Actor.system(), url="https://127.0.0.1/spare"
        )[0],
        action_prefix="webhook",
    ),
    "leads.Lead": FormCase(
        instance=lambda w: w["lead"],
        add=None,  # leads come in through the API (routing, counters, timers)
        change=_set(phone="+200"),
        may_delete=False,  # closed, never deleted
    ),
}


def _form_data(response) -> dict:
    """What the browser would post back for the admin page as rendered."""
    data = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms.append(inline.formset.management_form)
        forms.extend(inline.formset.forms)
    for form in forms:
        for bound in form:
            value = bound.value()
            if isinstance(bound.field.widget, CheckboxInput):
                if value:
                    data[bound.html_name] = "on"
            elif getattr(bound.field.widget, "allow_multiple_selected", False):
                data[bound.html_name] = [str(v) for v in value or [] if v != ""]
            elif isinstance(value, list | tuple):
                data[bound.html_name] = [str(v) for v in value]
            else:
                data[bound.html_name] = "" if value is None else str(value)
    return data


def _form_errors(response) -> str:
    if response.status_code != 200 or not response.context:
        return f"status {response.status_code}"
    errors = [response.context["adminform"].form.errors]
    errors += [inline.formset.errors for inline in response.context["inline_admin_formsets"]]
    return repr(errors)


def _url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _assert_one_row_by(person, before: int, what: str):
    rows = ActivityLog.all_tenants.order_by("-created_at")
    assert rows.count() == before + 1, f"{what}: {rows.count() - before} activity rows"
    row = rows.first()
    assert (row.actor_label, row.via, row.actor_user_id) == (person.email, "admin", person.pk), (
        f"{what}: recorded as {row.actor_label!r} via {row.via!r}"
    )
    return row


def _noun(label, model):
    return FORM_CASES[label].action_prefix or action_noun(model)


def _registered(label):
    for model, model_admin in admin.site._registry.items():
        if model._meta.label == label:
            return model, model_admin
    raise AssertionError(f"{label} is not registered in the admin")


def test_every_admin_model_is_covered_or_exempt():
    registered = {model._meta.label for model in admin.site._registry}
    missing = registered - set(FORM_CASES) - set(EXEMPT)
    assert not missing, f"admin models without a one-door case or an exemption: {missing}"
    assert not (set(FORM_CASES) | set(EXEMPT)) - registered, "cases for unregistered models"


@pytest.mark.parametrize("label", sorted(EXEMPT))
def test_exempt_admins_offer_no_add_change_or_delete(label):
    _, model_admin = _registered(label)
    request = RequestFactory().get("/")
    request.user = UserFactory(is_staff=True, is_superuser=True)
    if label.split(".")[0] in ("auth", "axes") or label == "teams.User":
        return  # global, not tenant data: see EXEMPT
    assert not model_admin.has_add_permission(request), f"{label} can be added in the admin"
    assert not model_admin.has_delete_permission(request), f"{label} can be deleted"
    if label != "inbox.InboxSession":
        assert not model_admin.has_change_permission(request), f"{label} can be edited"
    else:
        form = model_admin.get_form(request, model_admin.get_queryset(request).model())
        assert not form.base_fields, f"{label} has editable fields: {list(form.base_fields)}"


@pytest.mark.parametrize("label", sorted(FORM_CASES))
def test_admin_add_form_writes_one_row(label, world, person):
    model, _ = _registered(label)
    client = Client()
    client.force_login(person)
    page = client.get(_url(model, "add"))
    if FORM_CASES[label].add is None or (label == "teams.Tenant" and not person.is_superuser):
        assert page.status_code == 403, f"{label} can be added without a service"
        return
    data = _form_data(page)
    FORM_CASES[label].add(world, data)
    before = ActivityLog.all_tenants.count()
    response = client.post(_url(model, "add"), data)
    assert response.status_code == 302, f"{label} add refused: {_form_errors(response)}"
    row = _assert_one_row_by(person, before, f"{label} add")
    assert row.action == f"{_noun(label, model)}.created"
    assert row.target_id


@pytest.mark.parametrize("label", sorted(FORM_CASES))
def test_admin_change_form_writes_one_row(label, world, person):
    model, _ = _registered(label)
    obj = FORM_CASES[label].instance(world)
    client = Client()
    client.force_login(person)
    page = client.get(_url(model, "change", obj.pk))
    assert page.status_code == 200
    data = _form_data(page)
    FORM_CASES[label].change(world, data)
    before = ActivityLog.all_tenants.count()
    response = client.post(_url(model, "change", obj.pk), data)
    assert response.status_code == 302, f"{label} change refused: {_form_errors(response)}"
    row = _assert_one_row_by(person, before, f"{label} change")
    assert row.action == f"{_noun(label, model)}.updated"
    assert row.data, "the row says what changed"
    assert (row.target_type.model_class(), row.target_id) == (model, str(obj.pk))


@pytest.mark.parametrize("label", sorted(FORM_CASES))
def test_admin_delete_writes_one_row(label, world, person):
    model, _ = _registered(label)
    case = FORM_CASES[label]
    obj = (case.disposable or case.instance)(world)
    client = Client()
    client.force_login(person)
    before = ActivityLog.all_tenants.count()
    response = client.post(_url(model, "delete", obj.pk), {"post": "yes"})
    if not FORM_CASES[label].may_delete:
        assert response.status_code == 403
        assert model._base_manager.filter(pk=obj.pk).exists()
        assert ActivityLog.all_tenants.count() == before
        return
    assert response.status_code == 302
    assert not model._base_manager.filter(pk=obj.pk).exists()
    row = _assert_one_row_by(person, before, f"{label} delete")
    assert row.action == f"{_noun(label, model)}.deleted"
    assert str(obj) in (row.data.get("row"), row.data.get("url"))


def _select(key):
    return lambda w: (w[key], {})


def _select_disposable(case):
    return lambda w: ((case.disposable or case.instance)(w), {})


# Every admin action that changes tenant data: what to select and what else to post.
ACTION_CASES = {
    ("teams.ApiKey", "revoke_selected"): _select("api_key"),
    ("outbox.OutboundMessage", "send_selected_again"): _select("failed_email"),
    ("webhooks.WebhookAttempt", "resend_selected"): _select("attempt"),
    ("webhooks.WebhookEndpoint", "rotate_secrets"): _select("endpoint"),
    ("webhooks.WebhookEndpoint", "send_test_events"): _select("endpoint"),
    ("leads.Lead", "close_selected"): _select("lead"),
    ("leads.Lead", "reassign_selected"): lambda w: (
        w["lead"],
        {"to_agent": str(w["owner"].pk), "reason": "manual", "apply": "Reassign"},
    ),
    ("inbox.InboxSession", "close_selected"): lambda w: (_session(w), {}),
    ("inbox.InboxSession", "run_assignment_again"): lambda w: (_session(w, unassign=True), {}),
    ("inbox.InboxSession", "assign_to"): lambda w: (
        _session(w, unassign=True),
        {"agent": str(w["agent"].pk), "apply": "Assign"},
    ),
    ("teams.Membership", "set_online"): lambda w: (_agent_with_presence(w, "away"), {}),
    ("teams.Membership", "set_away"): _select("agent"),
    ("teams.Membership", "set_offline"): _select("agent"),
    **{
        (label, "delete_selected"): _select_disposable(case)
        for label, case in FORM_CASES.items()
        if case.may_delete
    },
}


def _agent_with_presence(world, presence):
    from teams.models import Membership

    Membership.all_tenants.filter(pk=world["agent"].pk).update(presence=presence)
    return world["agent"]


def _session(world, unassign=False):
    from inbox.models import InboxSession

    sessions = InboxSession.objects.for_tenant(world["tenant"]).filter(pk=world["session_id"])
    if unassign:
        sessions.update(assigned_agent=None, unassigned_reason="no_agents")
    return sessions.get()


def _registered_actions():
    root = UserFactory(is_staff=True, is_superuser=True)
    request = RequestFactory().get("/")
    request.user = root
    for model, model_admin in admin.site._registry.items():
        for name in model_admin.get_actions(request):
            yield model._meta.label, name


def test_every_admin_action_is_covered_or_exempt(db):
    actions = set(_registered_actions())
    missing = actions - set(ACTION_CASES) - set(EXEMPT_ACTIONS)
    assert not missing, f"admin actions without a one-door case or an exemption: {missing}"
    assert not set(ACTION_CASES) - actions, "cases for actions the admin does not offer"


@pytest.mark.parametrize("label_action", sorted(ACTION_CASES), ids="/".join)
def test_admin_action_writes_one_row(label_action, world, person):
    label, action = label_action
    model, _ = _registered(label)
    obj, extra = ACTION_CASES[label_action](world)
    client = Client()
    client.force_login(person)
    before = ActivityLog.all_tenants.count()
    response = client.post(
        _url(model, "changelist"),
        {"action": action, ACTION_CHECKBOX_NAME: [str(obj.pk)], "post": "yes", **extra},
    )
    assert response.status_code == 302, f"{label} {action}: status {response.status_code}"
    _assert_one_row_by(person, before, f"{label} {action}")
