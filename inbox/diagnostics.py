"""The troubleshooting checklist for "session not assigned", run for you.

Each check reads one thing the assignment depends on (API keys, agents by role, the
default team, team members and schedule, the assignment config, availability, the CRM
integration) and says OK, PROBLEM or INFO, with the fix: Option A (tenant roles), B (a
default team) or C (send a team). The verdict is a dry run of the assignment engine:
who the next handover would go to, without assigning.
"""

from dataclasses import asdict, dataclass, field

from django.utils import timezone

from inbox.models import CrmIntegration, InboxSession
from inbox.selectors import open_sessions_per_agent
from teams.models import ApiKey, Membership, Presence, Role, Strategy, Team, Tenant
from teams.routing import UnassignedReason, resolve_config, route
from teams.routing.schedules import schedule_is_open

OPTION_A = (
    "Option A - Tenant roles: give at least one person the role Member, Admin or Super "
    "admin in this tenant (admin: Memberships), active."
)
OPTION_B = (
    "Option B - Default team: mark one team as default and add at least one active "
    "member to it (admin: Teams)."
)
OPTION_C = "Option C - Send a team: send teamId of a team that has active members."

OK, PROBLEM, INFO = "OK", "PROBLEM", "INFO"


@dataclass
class Check:
    check: str
    status: str
    detail: str
    fix: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Report:
    tenant_id: str
    team_id: str | None
    checks: list[Check]
    verdict: dict

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if check.status == PROBLEM]

    def as_dict(self) -> dict:
        return {
            "tenantId": self.tenant_id,
            "teamId": self.team_id,
            "generatedAt": timezone.now().isoformat(),
            "verdict": self.verdict,
            "problems": len(self.problems),
            "checks": [asdict(check) for check in self.checks],
        }


def _agents(tenant: Tenant):
    return Membership.objects.for_tenant(tenant).filter(is_active=True, user__is_active=True)


def _check_api_keys(tenant: Tenant) -> Check:
    prefixes = list(
        ApiKey.objects.for_tenant(tenant).filter(is_active=True).values_list("prefix", flat=True)
    )
    if prefixes:
        return Check(
            "api_keys",
            OK,
            f"{len(prefixes)} active API key(s): {', '.join(prefixes)}. A handover runs in "
            "the tenant that owns the key it was sent with.",
            data={"prefixes": prefixes},
        )
    return Check(
        "api_keys",
        PROBLEM,
        "No active API key: external systems cannot call the handover for this tenant.",
        "Create one: manage.py create_api_key --tenant <id> --name <what for>.",
    )


def _check_tenant_agents(tenant: Tenant, *, waterfall: list[str]) -> tuple[Check, int]:
    """Agents a handover without teamId can find: active people in the waterfall's roles."""
    counts = {role: 0 for role in Role.values}
    for role in _agents(tenant).values_list("role", flat=True):
        counts[role] += 1
    routed_roles = [role for role in Role.values if role in waterfall]
    usable = sum(counts[role] for role in routed_roles)
    detail = (
        f"Active agents by role: member={counts['member']}, admin={counts['admin']}, "
        f"super_admin={counts['super_admin']}."
    )
    left_out = [role for role in Role.values if role not in waterfall and counts[role]]
    if left_out:
        detail += (
            f" The waterfall ({' -> '.join(waterfall)}) leaves out {', '.join(left_out)}, "
            "so those agents are not used."
        )
    data = {**counts, "routed": usable}
    if usable:
        return Check("tenant_agents", OK, detail, data=data), usable
    fix = OPTION_A
    if left_out:
        fix += " Or add their role to the waterfall of the assignment config."
    return (
        Check(
            "tenant_agents",
            PROBLEM,
            detail + " A handover without teamId finds 0 agents from tenant roles.",
            fix,
            data=data,
        ),
        usable,
    )


def _check_default_team(tenant: Tenant, *, tenant_agents: int) -> Check:
    team = Team.objects.for_tenant(tenant).filter(is_default=True).first()
    if team is None:
        status = INFO if tenant_agents else PROBLEM
        return Check(
            "default_team",
            status,
            "No default team. It is the fallback when no tenant role has agents.",
            "" if tenant_agents else OPTION_B,
        )
    members = _agents(tenant).filter(team_memberships__team=team).count()
    data = {"teamId": str(team.pk), "name": team.name, "activeMembers": members}
    if members:
        return Check(
            "default_team",
            OK,
            f"Default team {team.name!r}: {members} active member(s).",
            data=data,
        )
    return Check(
        "default_team",
        INFO if tenant_agents else PROBLEM,
        f"Default team {team.name!r} has no active members.",
        "" if tenant_agents else OPTION_B,
        data=data,
    )


def _check_team(tenant: Tenant, team: Team) -> list[Check]:
    members = _agents(tenant).filter(team_memberships__team=team)
    active = members.count()
    available = members.filter(presence=Presence.ONLINE).count()
    checks = []
    data = {
        "teamId": str(team.pk),
        "name": team.name,
        "activeMembers": active,
        "available": available,
    }
    if active:
        checks.append(
            Check(
                "team",
                OK,
                f"Team {team.name!r}: {active} active member(s), {available} available.",
                data=data,
            )
        )
    else:
        checks.append(
            Check(
                "team",
                PROBLEM,
                f"Team {team.name!r} has no active members; handovers with this teamId stay "
                "unassigned (there is no fallback when a team is sent).",
                "Add members to this team, or " + OPTION_C,
                data=data,
            )
        )
    schedule = getattr(team, "schedule", None)
    if schedule is not None and schedule.is_enabled:
        is_open = schedule_is_open(schedule, timezone.now())
        checks.append(
            Check(
                "team_schedule",
                OK if is_open else PROBLEM,
                f"Schedule ({schedule.timezone}) is {'open' if is_open else 'closed'} now.",
                "" if is_open else "Wait for opening hours, widen them, or send another teamId.",
                data={"open": is_open, "timezone": schedule.timezone},
            )
        )
    return checks


def _check_config(tenant: Tenant, team: Team | None) -> Check:
    config = resolve_config(tenant=tenant, team=team)
    data = {
        "strategy": config.strategy,
        "enabled": config.is_enabled,
        "waterfall": config.waterfall,
        "source": config.source,
    }
    detail = (
        f"Strategy {config.strategy} ({config.source} config), "
        f"{'enabled' if config.is_enabled else 'disabled'}, waterfall "
        f"{' -> '.join(config.waterfall)}."
    )
    if not config.is_enabled:
        return Check("assignment_config", PROBLEM, detail, "Enable the assignment config.", data)
    if config.strategy == Strategy.MANUAL:
        return Check(
            "assignment_config",
            PROBLEM,
            detail + " Manual never auto-assigns.",
            "Change the strategy to round_robin or least_busy to auto-assign.",
            data,
        )
    return Check("assignment_config", OK, detail, data=data)


def _check_crm(tenant: Tenant) -> Check:
    integration = (
        CrmIntegration.objects.for_tenant(tenant).order_by("-is_active", "-updated_at").first()
    )
    note = "Assignment does not depend on it: only the confirmation message does."
    if integration is None:
        return Check(
            "crm_integration",
            PROBLEM,
            f"No CRM integration, so the confirmation message cannot be sent. {note}",
            "Add an active CRM integration with apiUrl, API key and config.phoneNumberId.",
        )
    missing = integration.missing_parts()
    data = {
        "name": integration.name,
        "isActive": integration.is_active,
        "apiUrl": integration.api_url,
        "hasApiKey": integration.has_api_key,
        "phoneNumberId": integration.phone_number_id,
    }
    if missing:
        return Check(
            "crm_integration",
            PROBLEM,
            f"CRM integration {integration.name!r} lacks: {', '.join(missing)}. {note}",
            "Complete the integration so the 'Connecting you to an agent...' message is sent.",
            data,
        )
    return Check(
        "crm_integration", OK, f"CRM integration {integration.name!r} is complete.", data=data
    )


def _confirmation(session: InboxSession) -> dict:
    message = session.confirmation_message
    if message is None:
        return {
            "status": "skipped",
            "skippedReason": session.confirmation_skipped_reason or None,
            "attempts": 0,
            "lastError": None,
        }
    return {
        "status": message.status,
        "skippedReason": None,
        "attempts": message.attempts,
        "lastError": message.last_error or None,
    }


def _check_session(tenant: Tenant, session: InboxSession) -> Check:
    data = {
        "sessionId": str(session.pk),
        "status": session.status,
        "assignedAgentId": str(session.assigned_agent_id) if session.assigned_agent_id else None,
        "unassignedReason": session.unassigned_reason or None,
        "lastAttempt": session.last_assignment_attempt,
        "confirmation": _confirmation(session),
    }
    if session.assigned_agent_id:
        return Check("session", OK, "The session is assigned.", data=data)
    reason = (
        UnassignedReason(session.unassigned_reason).label
        if session.unassigned_reason
        else "not routed yet"
    )
    return Check("session", PROBLEM, f"The session is unassigned: {reason}.", data=data)


def diagnose_handover(
    *, tenant: Tenant, team: Team | None = None, session: InboxSession | None = None
) -> Report:
    checks = [_check_api_keys(tenant)]
    waterfall = resolve_config(tenant=tenant, team=team).waterfall
    tenant_agents_check, tenant_agents = _check_tenant_agents(tenant, waterfall=waterfall)
    checks.append(tenant_agents_check)
    checks.append(_check_default_team(tenant, tenant_agents=tenant_agents))
    if team is not None:
        checks.extend(_check_team(tenant, team))
    checks.append(_check_config(tenant, team))
    if session is not None:
        checks.append(_check_session(tenant, session))

    decision = route(
        tenant=tenant,
        team=team,
        load=open_sessions_per_agent(tenant),
        work="sessions",
        dry_run=True,
    )
    if decision.reason == UnassignedReason.ALL_AWAY:
        checks.append(
            Check(
                "availability",
                PROBLEM,
                "Agents exist but every one is away or offline.",
                "Mark agents available (admin: Memberships, or the tenant's agents).",
            )
        )
    elif decision.reason == UnassignedReason.ALL_AT_CAPACITY:
        checks.append(
            Check(
                "availability",
                PROBLEM,
                "Every available agent is at capacity (open sessions).",
                "Raise their capacity, close finished sessions, or mark more agents available.",
            )
        )
    checks.append(_check_crm(tenant))

    fixes = []
    if decision.reason == UnassignedReason.NO_AGENTS:
        fixes = (
            [OPTION_C, OPTION_A, OPTION_B]
            if team is None
            else ["Add members to the team", OPTION_C]
        )
    verdict = {
        "wouldAssign": decision.agent is not None,
        "agent": (
            {
                "id": str(decision.agent.pk),
                "name": decision.agent.display_name,
                "email": decision.agent.user.email,
            }
            if decision.agent
            else None
        ),
        "strategy": decision.strategy,
        "tier": decision.tier,
        "reason": decision.reason,
        "tiers": decision.tiers,
        "availableAgents": decision.available_agents,
        "fixes": fixes,
    }
    return Report(
        tenant_id=str(tenant.pk),
        team_id=str(team.pk) if team else None,
        checks=checks,
        verdict=verdict,
    )
