"""Demo data for `manage.py seed_demo`: tenants, people, teams and API keys.

Idempotent: people, teams and configs are looked up by natural keys and created only
when missing. The demo API keys and the admin password are renewed on every run,
because a key's plaintext is never stored and so cannot be printed a second time.
"""

import datetime
import secrets

from axes.utils import reset as axes_reset
from django.db import transaction
from django.utils import timezone

from core.actor import Actor
from teams.models import (
    ApiKey,
    AssignmentConfig,
    Membership,
    Presence,
    PresenceSource,
    Role,
    Strategy,
    Team,
    TeamHoliday,
    TeamMember,
    TeamOpeningHours,
    TeamSchedule,
    Tenant,
    User,
    Weekday,
)
from teams.services import (
    add_membership,
    add_team_member,
    create_api_key,
    revoke_api_key,
    save_tenant_record,
    set_agent_presence,
)

DEMO_SLUG = "demo"
OTHER_SLUG = "demo-other"
DEMO_KEY_NAME = "Demo key (seed_demo)"
ADMIN_EMAIL = "admin@demo.test"
ACTOR = Actor.for_command("seed_demo")

DEMO_AGENTS = [
    # email, full name, role
    ("alice@demo.test", "Alice Member", Role.MEMBER),
    ("bob@demo.test", "Bob Member", Role.MEMBER),
    ("carol@demo.test", "Carol Member", Role.MEMBER),
    ("dave@demo.test", "Dave Member", Role.MEMBER),
    ("erin@demo.test", "Erin Admin", Role.ADMIN),
    ("frank@demo.test", "Frank Superadmin", Role.SUPER_ADMIN),
]
DEMO_TEAMS = [
    # name, strategy, is_default, member emails
    ("Support", Strategy.ROUND_ROBIN, True, ["alice@demo.test", "bob@demo.test"]),
    (
        "Sales",
        Strategy.ROUND_ROBIN,
        False,
        ["bob@demo.test", "carol@demo.test", "dave@demo.test"],
    ),
    ("Night desk", Strategy.LEAST_BUSY, False, ["carol@demo.test", "erin@demo.test"]),
]
DEMO_AGENT_PASSWORD = "demo-agent-password"  # noqa: S105 - demo data, printed on purpose
# In no team: away, to show presence without slowing the demo's first handover (every
# agent the routing teams and tiers rely on stays online).
AWAY_AGENT = ("gina@demo.test", "Gina Away", Role.MEMBER)
ACCEPT_WINDOW_MINUTES = 10


def _user(email: str, full_name: str, *, password: str | None = None, **flags) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        user = User.objects.create_user(email=email, password=password, full_name=full_name)
    changed = [name for name, value in flags.items() if getattr(user, name) != value]
    for name in changed:
        setattr(user, name, flags[name])
    if password is not None:
        user.set_password(password)
        changed.append("password")
        # A fresh password comes with a fresh start: earlier failed logins (someone
        # trying the old one) must not keep the printed login locked.
        axes_reset(username=user.email)
    if changed:
        user.save(update_fields=changed)
    return user


def _membership(tenant: Tenant, user: User, role: str) -> Membership:
    membership = Membership.objects.for_tenant(tenant).filter(user=user).first()
    return membership or add_membership(tenant=tenant, user=user, role=role, actor=ACTOR)


def _team(tenant: Tenant, name: str, *, strategy: str, is_default: bool) -> Team:
    team, _ = Team.all_tenants.get_or_create(
        tenant=tenant, name=name, defaults={"is_default": is_default}
    )
    team.config, _ = AssignmentConfig.all_tenants.get_or_create(
        tenant=tenant, team=team, defaults={"strategy": strategy}
    )
    return team


def _team_member(team: Team, membership: Membership) -> None:
    if (
        not TeamMember.objects.for_tenant(team.tenant)
        .filter(team=team, membership=membership)
        .exists()
    ):
        add_team_member(team=team, membership=membership, actor=ACTOR)


def _office_hours_schedule(team: Team) -> None:
    schedule, created = TeamSchedule.all_tenants.get_or_create(
        tenant=team.tenant, team=team, defaults={"timezone": "Europe/London"}
    )
    if not created:
        return
    for weekday in (
        Weekday.MONDAY,
        Weekday.TUESDAY,
        Weekday.WEDNESDAY,
        Weekday.THURSDAY,
        Weekday.FRIDAY,
    ):
        TeamOpeningHours.objects.create(
            tenant=team.tenant,
            schedule=schedule,
            weekday=weekday,
            opens_at=datetime.time(9),
            closes_at=datetime.time(17),
        )
    TeamHoliday.objects.create(
        tenant=team.tenant,
        schedule=schedule,
        date=datetime.date(timezone.now().year, 12, 25),
        name="Christmas Day",
    )


def _presence(agent: Membership, presence: str) -> Membership:
    """Put the agent back where the demo needs them, if someone changed it since."""
    if agent.presence == presence:
        return agent
    return set_agent_presence(
        membership=agent, presence=presence, actor=ACTOR, source=PresenceSource.SYSTEM
    )


def _accept_window(tenant: Tenant) -> None:
    if tenant.session_accept_window_minutes != ACCEPT_WINDOW_MINUTES:
        tenant.session_accept_window_minutes = ACCEPT_WINDOW_MINUTES
        save_tenant_record(instance=tenant, fields=["session_accept_window_minutes"], actor=ACTOR)


def _fresh_demo_key(tenant: Tenant) -> str:
    for old in ApiKey.objects.for_tenant(tenant).filter(name=DEMO_KEY_NAME, is_active=True):
        revoke_api_key(api_key=old, actor=ACTOR)
    _, plaintext = create_api_key(tenant=tenant, name=DEMO_KEY_NAME, actor=ACTOR)
    return plaintext


@transaction.atomic
def seed(context: dict) -> None:
    """Fill `context` with the demo tenants, people, teams and keys (see seed_demo)."""
    tenant, _ = Tenant.objects.get_or_create(
        slug=DEMO_SLUG, defaults={"name": "Demo Co", "timezone": "Europe/London"}
    )
    AssignmentConfig.all_tenants.get_or_create(tenant=tenant, team=None)

    password = context["admin_password"] or secrets.token_urlsafe(12)
    admin_user = _user(
        ADMIN_EMAIL, "Demo Admin", password=password, is_staff=True, is_superuser=True
    )
    admin = _membership(tenant, admin_user, Role.ADMIN)

    agents = {ADMIN_EMAIL: admin}
    for email, full_name, role in DEMO_AGENTS:
        user = _user(email, full_name, password=None, is_staff=role != Role.MEMBER)
        if not user.has_usable_password():
            user.set_password(DEMO_AGENT_PASSWORD)
            user.save(update_fields=["password"])
        agents[email] = _membership(tenant, user, role)
    for email, agent in agents.items():
        agents[email] = _presence(agent, Presence.ONLINE)
    email, full_name, role = AWAY_AGENT
    away_user = _user(email, full_name, password=None)
    if not away_user.has_usable_password():
        away_user.set_password(DEMO_AGENT_PASSWORD)
        away_user.save(update_fields=["password"])
    agents[email] = _presence(_membership(tenant, away_user, role), Presence.AWAY)
    _accept_window(tenant)

    teams = []
    for name, strategy, is_default, emails in DEMO_TEAMS:
        team = _team(tenant, name, strategy=strategy, is_default=is_default)
        for email in emails:
            _team_member(team, agents[email])
        if name == "Night desk":
            _office_hours_schedule(team)
        teams.append((team, [agents[e] for e in emails]))

    other, _ = Tenant.objects.get_or_create(slug=OTHER_SLUG, defaults={"name": "Other Co"})
    other_user = _user("olga@other.test", "Olga Other", password=None)
    if not other_user.has_usable_password():
        other_user.set_password(DEMO_AGENT_PASSWORD)
        other_user.save(update_fields=["password"])
    other_agent = _membership(other, other_user, Role.ADMIN)
    other_team = _team(other, "Other support", strategy=Strategy.ROUND_ROBIN, is_default=True)
    _team_member(other_team, other_agent)

    context.update(
        tenant_obj=tenant,
        other_tenant_obj=other,
        agents_by_email=agents,
        output={
            "tenant": {"id": str(tenant.id), "name": tenant.name},
            "api_key": _fresh_demo_key(tenant),
            "admin": {
                "username": ADMIN_EMAIL,
                "password": password,
                "agent_id": str(admin.id),
            },
            "agents": [
                {"id": str(m.id), "email": email, "role": m.role, "presence": m.presence}
                for email, m in agents.items()
            ],
            "accept_window_minutes": tenant.session_accept_window_minutes,
            "teams": [
                {
                    "id": str(team.id),
                    "name": team.name,
                    "strategy": team.config.strategy,
                    "is_default": team.is_default,
                    "agent_ids": [str(m.id) for m in members],
                }
                for team, members in teams
            ],
            "leads": [],
            "other_tenant": {
                "id": str(other.id),
                "api_key": _fresh_demo_key(other),
                "team_id": str(other_team.id),
                "agent_id": str(other_agent.id),
                "lead_id": None,
            },
        },
    )
