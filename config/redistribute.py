"""The admin page an agent's going away leads to (deactivated, or set offline on their
page, in the tenant's agent list or by the presence action): their open conversations
and leads, and one button that moves them all through the routing engine.

It lives here, above inbox and leads, because it shows and moves both kinds of work;
the teams admin only links to it by URL name. Scoped like the rest of the admin: a
tenant admin sees only their tenants' agents, anyone else's is a 404.
"""

from django.contrib import admin, messages
from django.http import Http404, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode

from core.admin_scope import scope_to_admin_tenants
from core.errors import DomainError
from inbox.redistribution import open_sessions_of, redistribute_sessions
from leads.redistribution import open_leads_of, redistribute_leads
from teams.admin import admin_actor
from teams.models import Membership
from teams.routing import UnassignedReason

URL_NAME = "admin-redistribute-agent"


def _agent_or_404(request, agent_id) -> Membership:
    agents = scope_to_admin_tenants(
        Membership.all_tenants.select_related("user", "tenant"), request
    )
    agent = agents.filter(pk=agent_id).first()
    if agent is None:
        raise Http404("No such agent.")
    return agent


def _safe_next(request) -> str:
    url = request.POST.get("next") or request.GET.get("next") or ""
    if url and url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return url
    return ""


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _why(reason: str) -> str:
    """The engine's reason as admins read it elsewhere (the unassigned list)."""
    if reason in UnassignedReason.values:
        return str(UnassignedReason(reason).label).lower()
    return reason


def _name(agent: Membership) -> str:
    return agent.display_name or agent.user.email


def redistribute_view(request, agent_id):
    agent = _agent_or_404(request, agent_id)
    if request.method == "POST":
        return _redistribute(request, agent)
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    sessions = list(open_sessions_of(agent))
    leads = list(open_leads_of(agent))
    next_url = _safe_next(request)
    if next_url and not sessions and not leads:
        # Coming from a save that sent the agent away: nothing to move, nothing to show.
        messages.info(request, f"{_name(agent)} has no open conversations or leads.")
        return redirect(next_url)
    context = {
        **admin.site.each_context(request),
        "title": f"Open work of {_name(agent)}",
        "opts": Membership._meta,
        "agent": agent,
        "sessions": sessions,
        "leads": leads,
        "button": (
            f"Redistribute {_plural(len(sessions), 'conversation')} "
            f"and {_plural(len(leads), 'lead')}"
        ),
        "next": next_url,
        "back_url": next_url or reverse("admin:teams_membership_change", args=[agent.pk]),
    }
    return TemplateResponse(request, "admin/redistribute.html", context)


def _redistribute(request, agent: Membership):
    tenant = agent.tenant
    actor = admin_actor(request, tenant)
    try:
        sessions = redistribute_sessions(tenant=tenant, agent=agent, actor=actor)
        leads = redistribute_leads(
            tenant=tenant, agent=agent, actor=actor, reassigned_by=actor.membership
        )
    except DomainError as exc:
        messages.error(request, f"Nothing more was moved: {exc.message}")
        return redirect(_page_url(agent, _safe_next(request)))
    _report(request, agent, sessions, leads)
    next_url = _safe_next(request)
    if next_url and not sessions.stayed and not leads.stayed:
        return redirect(next_url)
    return redirect(_page_url(agent, next_url))


def _page_url(agent: Membership, next_url: str) -> str:
    url = reverse(URL_NAME, args=[agent.pk])
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


def _report(request, agent, sessions, leads) -> None:
    name = _name(agent)
    moved = [f"{m.contact} → {_name(m.to_agent)}" for m in sessions.moved]
    moved += [f"{m.name} → {_name(m.to_agent)}" for m in leads.moved]
    if moved:
        messages.success(
            request,
            f"Moved {_plural(len(sessions.moved), 'conversation')} and "
            f"{_plural(len(leads.moved), 'lead')}: {'; '.join(moved)}.",
        )
    if sessions.unassigned:
        waiting = "; ".join(f"{m.contact} ({_why(m.reason)})" for m in sessions.unassigned)
        messages.warning(
            request,
            f"{_plural(len(sessions.unassigned), 'conversation')} nobody else can take now "
            f"{'wait' if len(sessions.unassigned) != 1 else 'waits'} unassigned: {waiting}. "
            "The first agent to come online gets them.",
        )
    stayed = [f"{m.contact} ({_why(m.reason)})" for m in sessions.stayed]
    stayed += [f"{m.name} ({_why(m.reason)})" for m in leads.stayed]
    if stayed:
        messages.warning(
            request,
            f"{_plural(len(sessions.stayed), 'conversation')} and "
            f"{_plural(len(leads.stayed), 'lead')} stay with {name}: nobody else can take "
            f"them now. {'; '.join(stayed)}. Try again when someone is online, or move "
            "them one by one.",
        )
    gone = sessions.gone + leads.gone
    if gone:
        messages.info(
            request,
            f"{_plural(gone, 'item')} had been closed or moved by someone else meanwhile.",
        )
    if not (moved or sessions.unassigned or stayed or gone):
        messages.info(request, f"{name} has no open conversations or leads.")


urlpatterns = [
    path(
        "<uuid:agent_id>/redistribute/",
        admin.site.admin_view(redistribute_view),
        name=URL_NAME,
    ),
]
