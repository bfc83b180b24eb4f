"""Agent pages: "My leads" and the lead page that emails link to."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from core import log_context
from core.errors import DomainError
from leads.models import Lead
from leads.selectors import leads_of_agent, membership_for_lead
from leads.services import claim_lead, mark_lead_contacted
from teams.models import Membership


@login_required
def my_leads(request):
    memberships = (
        Membership.all_tenants.filter(user=request.user, is_active=True)
        .select_related("tenant")
        .order_by("tenant__name")
    )
    sections = [(m, list(leads_of_agent(membership=m))) for m in memberships]
    return render(request, "leads/my_leads.html", {"sections": sections})


def _lead_and_membership(request, lead_id):
    membership = membership_for_lead(user=request.user, lead_id=lead_id)
    lead = (
        Lead.objects.for_tenant(membership.tenant)
        .select_related("assigned_agent__user", "tenant")
        .filter(pk=lead_id, assigned_agent=membership)
        .first()
        if membership
        else None
    )
    if lead is None:
        # Not theirs, or not in their tenant: the lead does not exist for them.
        raise Http404("Lead not found")
    log_context.bind(tenant_id=lead.tenant_id, lead_id=lead.pk)
    return lead, membership


@login_required
def lead_page(request, lead_id):
    lead, _ = _lead_and_membership(request, lead_id)
    history = lead.reassignments.select_related("from_agent__user", "to_agent__user")[:20]
    return render(request, "leads/lead_page.html", {"lead": lead, "history": history})


def _agent_action(service, done_message):
    @login_required
    @require_POST
    def view(request, lead_id):
        lead, membership = _lead_and_membership(request, lead_id)
        try:
            service(tenant=membership.tenant, lead_id=lead.pk, agent=membership, via="agent_page")
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, done_message)
        return redirect("lead-page", lead_id=lead.pk)

    return view


claim = _agent_action(claim_lead, "Claimed. The contact window has started.")
contacted = _agent_action(mark_lead_contacted, "Marked as contacted.")
