"""Agent pages: my conversations, my notices, my presence.

Pages are plain HTML forms that POST and redirect with a message (they work without
JavaScript). The lists refresh themselves with htmx polling small fragment endpoints
(see docs and workspace/static/workspace/live.js for why polling, not server-sent
events); a fragment whose content has not changed answers 204 and is not swapped.
"""

import uuid
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from core import log_context
from core.actor import Actor
from core.errors import DomainError, InvalidInput
from inbox.acceptance import accept_session, session_of_agent, transfer_session
from inbox.services import close_session
from teams.models import Membership, Team
from teams.services import record_page_heartbeat
from workspace.context_processors import memberships_of_request
from workspace.selectors import (
    conversations_of,
    conversations_version,
    notices_of,
    notices_version,
    unread_notice_count,
)
from workspace.services import (
    mark_all_notices_read,
    mark_notice_read,
    set_conversation_emails_everywhere,
    set_presence_everywhere,
)

VIA = "agent_page"
LIVE_VERSION_HEADER = "X-Live-Version"


def _actor(membership: Membership) -> Actor:
    return Actor.for_membership(membership, via=VIA)


def _back(request, default: str):
    """Where a form came from (its `next`), if that is a page of this site."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(default)


def fragment(view):
    """A fragment the pages poll. Logged out (the session expired in another tab), the
    answer asks htmx to reload the page, which then goes to the login page; a
    redirect would swap the login form into the middle of the page."""

    @wraps(view)
    @require_GET
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return HttpResponse(status=401, headers={"HX-Refresh": "true"})
        return view(request, *args, **kwargs)

    return wrapped


def _unchanged(request, version: str) -> bool:
    return request.headers.get(LIVE_VERSION_HEADER) == version


# --- Conversations ---------------------------------------------------------------------


def _conversations_context(request) -> dict:
    sections = conversations_of(memberships=memberships_of_request(request))
    return {"sections": sections, "version": conversations_version(sections)}


@login_required
@require_GET
def conversations(request):
    return render(request, "workspace/conversations.html", _conversations_context(request))


@fragment
def conversations_live(request):
    context = _conversations_context(request)
    if _unchanged(request, context["version"]):
        return HttpResponse(status=204)
    return render(request, "workspace/_conversations_live.html", context)


def _session_and_membership(request, session_id):
    found = session_of_agent(user=request.user, session_id=session_id)
    if found is None:
        # Another agent's, another tenant's, or closed: not a conversation of theirs.
        raise Http404("Conversation not found")
    session, membership = found
    log_context.bind(tenant_id=membership.tenant_id, session_id=session.pk)
    return session, membership


def _session_action(action, done_message):
    @login_required
    @require_POST
    def view(request, session_id):
        session, membership = _session_and_membership(request, session_id)
        try:
            action(request, session, membership)
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, done_message.format(contact=_contact(session)))
        return redirect("conversations")

    return view


def _contact(session) -> str:
    return session.contact_name or session.contact_id


def _accept(request, session, membership):
    accept_session(
        tenant=membership.tenant, session_id=session.pk, agent=membership, actor=_actor(membership)
    )


def _close(request, session, membership):
    close_session(
        tenant=membership.tenant,
        session_id=session.pk,
        actor=_actor(membership),
        assigned_to=membership,
    )


def _transfer_target(membership: Membership, value: str) -> dict:
    """The form's `to` ("agent:<id>" or "team:<id>") as the transfer service's argument;
    anything not of the agent's tenant is not a choice."""
    kind, _, raw_id = value.partition(":")
    try:
        target_id = uuid.UUID(raw_id)
    except ValueError:
        target_id = None
    tenant = membership.tenant
    if target_id and kind == "agent":
        agent = (
            Membership.objects.for_tenant(tenant)
            .select_related("user", "tenant")
            .filter(pk=target_id, is_active=True)
            .first()
        )
        if agent is not None:
            return {"to_agent": agent}
    elif target_id and kind == "team":
        team = Team.objects.for_tenant(tenant).filter(pk=target_id).first()
        if team is not None:
            return {"to_team": team}
    raise InvalidInput(code="invalid_target", message="Choose a teammate or a team.", field="to")


def _transfer(request, session, membership):
    target = _transfer_target(membership, request.POST.get("to", ""))
    transfer_session(
        tenant=membership.tenant, session_id=session.pk, actor=_actor(membership), **target
    )


accept = _session_action(_accept, "Accepted: {contact} is yours.")
close = _session_action(_close, "Closed the conversation with {contact}.")
transfer = _session_action(_transfer, "Transferred the conversation with {contact}.")


# --- Notifications ---------------------------------------------------------------------


def _notifications_context(request) -> dict:
    notices = notices_of(user=request.user)
    return {"notices": notices, "version": notices_version(notices)}


@login_required
@require_POST
def conversation_emails(request):
    """The agent's "email me about new conversations" switch, for every tenant they work
    for (like presence: it is about the person, not the tenant)."""
    enabled = request.POST.get("enabled") == "on"
    set_conversation_emails_everywhere(
        memberships=memberships_of_request(request), enabled=enabled, via=VIA
    )
    if enabled:
        messages.success(request, "You will also get an email for each new conversation.")
    else:
        messages.success(request, "No more emails for new conversations: notices only.")
    return _back(request, "notifications")


@login_required
@require_GET
def notifications(request):
    context = _notifications_context(request)
    memberships = memberships_of_request(request)
    context["conversation_emails"] = bool(memberships) and all(
        m.email_on_conversation for m in memberships
    )
    return render(request, "workspace/notifications.html", context)


@fragment
def notifications_live(request):
    context = _notifications_context(request)
    if _unchanged(request, context["version"]):
        return HttpResponse(status=204)
    return render(request, "workspace/_notifications_live.html", context)


@login_required
@require_POST
def notice_read(request, kind, notice_id):
    try:
        mark_notice_read(user=request.user, kind=kind, notice_id=notice_id)
    except DomainError as exc:
        raise Http404(exc.message) from exc
    return _back(request, "notifications")


@login_required
@require_POST
def notices_read_all(request):
    count = mark_all_notices_read(user=request.user)
    messages.success(request, f"Marked {count} notice{'' if count == 1 else 's'} read.")
    return _back(request, "notifications")


@fragment
def unread_badge(request):
    # Polled by every agent page's header: two COUNT queries on partial indexes.
    return render(
        request, "workspace/_unread_badge.html", {"unread": unread_notice_count(user=request.user)}
    )


# --- Presence --------------------------------------------------------------------------


@login_required
@require_POST
def presence(request):
    """The header's switch sets the same presence in every tenant the person works for:
    they are at their desk or not, whichever tenant's work comes in. (An admin or a
    tenant's own system can still set one tenant's presence apart.)"""
    memberships = memberships_of_request(request)
    status = request.POST.get("status", "")
    try:
        set_presence_everywhere(memberships=memberships, presence=status, via=VIA)
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        if memberships:
            messages.success(request, f"You are {status}.")
    return _back(request, "conversations")


@require_POST
def heartbeat(request):
    """The pages' "still here" every minute, which keeps page-set presence from lapsing
    to away. Not a page: a logged-out ping gets 401, not a redirect to the login form."""
    if not request.user.is_authenticated:
        return HttpResponse(status=401)
    now = timezone.now()
    for membership in memberships_of_request(request):
        record_page_heartbeat(membership=membership, now=now)
    return HttpResponse(status=204)
