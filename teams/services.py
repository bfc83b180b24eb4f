"""Writes for tenancy and people. Views, commands and the admin call these."""

import hashlib
import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import build_activity, field_changes, record_activities, record_activity
from core.actor import SYSTEM, Actor
from core.errors import Forbidden, InvalidInput
from teams.models import (
    ADMIN_ROLES,
    ApiKey,
    Membership,
    Presence,
    PresenceSource,
    Role,
    Team,
    TeamMember,
    Tenant,
    User,
)
from teams.signals import agent_became_available

API_KEY_SCHEME = "wk_"
API_KEY_PREFIX_BODY_LENGTH = 8
API_KEY_PREFIX_LENGTH = len(API_KEY_SCHEME) + API_KEY_PREFIX_BODY_LENGTH
_PREFIX_ALPHABET = string.ascii_letters + string.digits


def hash_api_key(plaintext: str) -> str:
    # Keys carry 256 random bits, so a fast unsalted hash is safe; a password hasher
    # would only make every API request slower.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def split_api_key(plaintext: str) -> tuple[str, str] | None:
    """`wk_Ab12Cd34_<secret>` → (`wk_Ab12Cd34`, `<secret>`), or None if malformed."""
    if (
        len(plaintext) < API_KEY_PREFIX_LENGTH + 33
        or len(plaintext) > 128
        or not plaintext.startswith(API_KEY_SCHEME)
        or plaintext[API_KEY_PREFIX_LENGTH] != "_"
    ):
        return None
    prefix = plaintext[:API_KEY_PREFIX_LENGTH]
    if not prefix[len(API_KEY_SCHEME) :].isalnum() or not prefix.isascii():
        return None
    return prefix, plaintext[API_KEY_PREFIX_LENGTH + 1 :]


@transaction.atomic
def create_api_key(
    *, tenant: Tenant, name: str, actor: Actor, created_by=None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored or shown again."""
    authorize_tenant_change(actor=actor, tenant=tenant)
    body = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(API_KEY_PREFIX_BODY_LENGTH))
    prefix = f"{API_KEY_SCHEME}{body}"
    plaintext = f"{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=prefix,
        secret_hash=hash_api_key(plaintext),
        created_by=created_by,
    )
    record_activity(
        tenant=tenant,
        action="api_key.created",
        actor=actor,
        target=api_key,
        data={"prefix": prefix, "name": name},
    )
    return api_key, plaintext


@transaction.atomic
def revoke_api_key(*, api_key: ApiKey, actor: Actor) -> ApiKey:
    authorize_tenant_change(actor=actor, tenant=api_key.tenant)
    api_key = ApiKey.objects.for_tenant(api_key.tenant).select_for_update().get(pk=api_key.pk)
    if api_key.is_active:
        api_key.is_active = False
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["is_active", "revoked_at"])
        record_activity(
            tenant=api_key.tenant,
            action="api_key.revoked",
            actor=actor,
            target=api_key,
            data={"prefix": api_key.prefix},
        )
    return api_key


def touch_api_key(*, api_key: ApiKey, resolution_seconds: int) -> None:
    """Record use, writing at most once per `resolution_seconds` per key."""
    now = timezone.now()
    if api_key.last_used_at and (now - api_key.last_used_at).total_seconds() <= resolution_seconds:
        return
    # The filter makes concurrent requests racing past the check above write once.
    cutoff = now - timedelta(seconds=resolution_seconds)
    ApiKey.objects.for_tenant(api_key.tenant_id).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=cutoff), pk=api_key.pk
    ).update(last_used_at=now)
    api_key.last_used_at = now


@transaction.atomic
def add_membership(
    *, tenant: Tenant, user: User, role: str = Role.MEMBER, actor: Actor, **fields
) -> Membership:
    membership = Membership.objects.create(tenant=tenant, user=user, role=role, **fields)
    record_activity(
        tenant=tenant,
        action="membership.created",
        actor=actor,
        target=membership,
        data={"user": user.email, "role": role},
    )
    return membership


@transaction.atomic
def add_team_member(*, team: Team, membership: Membership, actor: Actor, role=None) -> TeamMember:
    if membership.tenant_id != team.tenant_id or (role and role.tenant_id != team.tenant_id):
        raise ValueError("Team, agent and role must belong to the same tenant.")
    member = TeamMember.objects.create(
        tenant=team.tenant, team=team, membership=membership, role=role
    )
    record_activity(
        tenant=team.tenant,
        action="team.member_added",
        actor=actor,
        target=team,
        data={"agent_id": str(membership.pk), "email": membership.user.email},
    )
    return member


def announce_agent_available(*, membership: Membership) -> None:
    """Tell the apps holding unassigned work that this agent can take it. Call it inside
    the transaction that made the agent available: the receivers queue their retries
    with `enqueue_on_commit`, so they run after the commit, never for a rollback, and
    the request does not wait for the broker."""
    agent_became_available.send(
        sender=Membership, tenant_id=membership.tenant_id, agent_id=membership.pk
    )


@transaction.atomic
def set_agent_presence(
    *, membership: Membership, presence: str, actor: Actor, source: str, now=None
) -> Membership:
    """Set an agent's presence (online, away, offline) and say who set it from where
    (`source`: the agent pages, the admin, the API, the system). Coming online retries
    waiting work at once. One activity row per change, none when nothing changed;
    a page's presence that is unchanged still takes over from an admin's or the API's
    (so auto-away applies to it from then on)."""
    if presence not in Presence.values:
        raise InvalidInput(
            code="invalid_presence",
            message=f"status must be one of: {', '.join(Presence.values)}.",
            field="status",
        )
    now = now or timezone.now()
    membership = (
        Membership.objects.for_tenant(membership.tenant_id)
        .select_for_update(of=("self",))
        .select_related("tenant", "user")
        .get(pk=membership.pk)
    )
    previous = membership.presence
    if previous == presence and membership.presence_source == source:
        return membership
    membership.presence = presence
    membership.presence_source = source
    fields = ["presence", "presence_source"]
    if previous != presence:
        membership.presence_changed_at = now
        fields.append("presence_changed_at")
    if source == PresenceSource.PAGE:
        membership.last_seen_at = now  # the page that set it is alive now
        fields.append("last_seen_at")
    membership.save(update_fields=fields)
    if previous == presence:
        return membership
    record_activity(
        tenant=membership.tenant,
        action=f"membership.{presence}",
        actor=actor,
        target=membership,
        data={"from": previous, "to": presence, "source": source},
    )
    if presence == Presence.ONLINE and membership.is_active:
        announce_agent_available(membership=membership)
    return membership


# The agent pages send a heartbeat while open; one write per agent per this long at most.
HEARTBEAT_RESOLUTION = timedelta(seconds=30)
AUTO_AWAY_JOB = "mark_idle_agents_away"


def record_page_heartbeat(*, membership: Membership, now=None) -> bool:
    """The agent's pages are open now: remember it, writing at most once per
    HEARTBEAT_RESOLUTION (the filter makes racing heartbeats write once). Whether it
    wrote. It only keeps page-set presence from lapsing; it never changes presence."""
    now = now or timezone.now()
    seen = membership.last_seen_at
    if seen is not None and now - seen < HEARTBEAT_RESOLUTION:
        return False
    written = (
        Membership.objects.for_tenant(membership.tenant_id)
        .filter(
            Q(last_seen_at__isnull=True) | Q(last_seen_at__lte=now - HEARTBEAT_RESOLUTION),
            pk=membership.pk,
        )
        .update(last_seen_at=now)
    )
    membership.last_seen_at = now
    return bool(written)


def go_offline_after_logout(*, user, now=None) -> list[Membership]:
    """The user logged out of the agent pages: in every tenant where their presence
    follows the pages, they are offline now. Presence an admin or the API set stays.
    The memberships that changed."""
    # Deliberately across tenants: one person's memberships, wherever they work.
    memberships = Membership.all_tenants.filter(
        user=user, presence_source=PresenceSource.PAGE
    ).exclude(presence=Presence.OFFLINE)
    changed = []
    for membership in memberships.select_related("tenant", "user"):
        changed.append(
            set_agent_presence(
                membership=membership,
                presence=Presence.OFFLINE,
                actor=Actor.for_membership(membership, via="agent_page"),
                source=PresenceSource.PAGE,
                now=now,
            )
        )
    return changed


def mark_idle_agents_away(*, now=None, batch_size: int = 500) -> int:
    """Periodic job: online agents whose presence follows the agent pages, and whose
    pages sent no heartbeat for their tenant's `auto_away_minutes`, become away. Presence
    set by an admin or the API never lapses. Set-based: one batch per distinct
    `auto_away_minutes` (tenants share a few values); how many became away."""
    now = now or timezone.now()
    total = 0
    # Deliberately across tenants: the job covers every one.
    for minutes in (
        Tenant.objects.filter(is_active=True)
        .order_by()
        .values_list("auto_away_minutes", flat=True)
        .distinct()
    ):
        while True:
            marked = _mark_away_batch(now=now, minutes=minutes, batch_size=batch_size)
            total += marked
            if marked < batch_size:
                break
    return total


@transaction.atomic
def _mark_away_batch(*, now, minutes: int, batch_size: int) -> int:
    idle = Membership.all_tenants.filter(
        tenant__auto_away_minutes=minutes,
        tenant__is_active=True,
        presence=Presence.ONLINE,
        presence_source=PresenceSource.PAGE,
        last_seen_at__lt=now - timedelta(minutes=minutes),
    )
    # SKIP LOCKED: an agent whose presence is being set right now is that change's.
    agents = list(
        idle.select_for_update(skip_locked=True, of=("self",))
        .select_related("tenant", "user")
        .order_by("pk")[:batch_size]
    )
    if not agents:
        return 0
    Membership.all_tenants.filter(pk__in=[agent.pk for agent in agents]).update(
        presence=Presence.AWAY, presence_changed_at=now
    )
    actor = Actor.for_job(AUTO_AWAY_JOB)
    record_activities(
        [
            build_activity(
                tenant=agent.tenant,
                action=f"membership.{Presence.AWAY}",
                actor=actor,
                target=agent,
                data={
                    "from": Presence.ONLINE,
                    "to": Presence.AWAY,
                    "source": PresenceSource.PAGE,
                    "why": "auto_away",
                    "last_seen_at": agent.last_seen_at.isoformat(),
                    "auto_away_minutes": minutes,
                },
            )
            for agent in agents
        ]
    )
    return len(agents)


@transaction.atomic
def set_conversation_emails(*, membership: Membership, enabled: bool, actor: Actor) -> Membership:
    """The agent's own preference: also email them when a conversation is assigned or
    transferred to them (the in-app notice comes either way). One activity row per
    change, none when nothing changed."""
    membership = (
        Membership.objects.for_tenant(membership.tenant_id)
        .select_for_update(of=("self",))
        .select_related("tenant", "user")
        .get(pk=membership.pk)
    )
    if membership.email_on_conversation == enabled:
        return membership
    membership.email_on_conversation = enabled
    membership.save(update_fields=["email_on_conversation"])
    record_activity(
        tenant=membership.tenant,
        action="membership.updated",
        actor=actor,
        target=membership,
        data={"changes": {"email_on_conversation": [not enabled, enabled]}},
    )
    return membership


# --- One door for the admin's edits ----------------------------------------------------
#
# Every change the admin makes to a tenant's configuration (the tenant and its SLA
# windows, memberships, teams and their members, roles, schedules, assignment configs,
# API keys, CRM keys) goes through `save_tenant_record` or `delete_tenant_record`: one
# transaction, the permission check, and exactly one activity row saying what changed
# from what to what, by name.


def authorize_tenant_change(*, actor: Actor, tenant: Tenant | None) -> None:
    """A tenant's configuration is changed by a superuser, by an active admin or super
    admin of that tenant, or by the system itself (commands, jobs). `tenant` None means
    a new tenant: superusers and the system only."""
    user = actor.person_user
    if user is None and actor.label == SYSTEM:
        return
    if user is not None and user.is_active and user.is_superuser:
        return
    if (
        user is not None
        and user.is_active
        and tenant is not None
        and Membership.all_tenants.filter(
            tenant_id=tenant.pk, user=user, role__in=ADMIN_ROLES, is_active=True
        ).exists()
    ):
        return
    raise Forbidden(
        code="not_tenant_admin",
        message="Only a superuser or an admin of this tenant may change its configuration.",
    )


@dataclass
class RowChanges:
    """Edits to rows that belong to the record being saved (an admin inline): `saved`
    holds (row, changed field names) for new and edited rows, not yet saved."""

    label: str
    saved: list = field(default_factory=list)
    deleted: list = field(default_factory=list)


def _tenant_of(instance) -> Tenant | None:
    if isinstance(instance, Tenant):
        return None if instance._state.adding else instance
    return instance.tenant


def action_noun(model) -> str:
    """`ApiKey` → "api_key", as in the actions the services already write."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__).lower()


def _action_name(instance, verb: str) -> str:
    return f"{action_noun(type(instance))}.{verb}"


def _locked_copy(instance):
    return type(instance)._base_manager.select_for_update().get(pk=instance.pk)


def _save_row(row, fields, *, tenant) -> tuple[dict, bool]:
    """Save one row; return its readable changes and whether it is new."""
    if tenant is not None and hasattr(row, "tenant_id"):
        row.tenant = tenant
    _check_same_tenant(row)
    if row._state.adding:
        row.save(force_insert=True)
        return field_changes(None, row, fields), True
    before = _locked_copy(row)
    changes = field_changes(before, row, fields)
    if fields:
        row.save(update_fields=fields)
    return changes, False


def _check_same_tenant(row) -> None:
    # Form choices are scoped already; this holds the rule for every caller.
    tenant_id = getattr(row, "tenant_id", None)
    if tenant_id is None:
        return
    for model_field in row._meta.concrete_fields:
        related_model = model_field.related_model
        if not model_field.many_to_one and not model_field.one_to_one:
            continue
        if related_model is Tenant or not hasattr(related_model, "tenant_id"):
            continue
        related = getattr(row, model_field.name)
        if related is not None and related.tenant_id != tenant_id:
            raise InvalidInput(
                code="other_tenant",
                message=f"The {model_field.verbose_name} belongs to another tenant.",
                field=model_field.name,
            )


def _announce_if_available(row, fields) -> None:
    turned_on = {"presence", "is_active"} & set(fields)
    if isinstance(row, Membership) and turned_on and row.is_online and row.is_active:
        announce_agent_available(membership=row)


@transaction.atomic
def save_tenant_record(
    *, instance, fields: list[str], actor: Actor, rows: list[RowChanges] = ()
) -> object:
    """Create or change one configuration record and the rows edited with it (inlines),
    and record it once: `<model>.created` or `<model>.updated`, with
    data = {"changes": {field: [old, new]}, "rows": [{"rows", "op", "row", "changes"}]}.
    Only `fields` are written, so a field another process owns (e.g.
    `Tenant.has_active_webhooks`) is never overwritten from a stale form. Nothing
    changed, nothing recorded."""
    tenant = _tenant_of(instance)
    authorize_tenant_change(actor=actor, tenant=tenant)
    changes, created = _save_row(instance, list(fields), tenant=None)
    if isinstance(instance, Tenant):
        tenant = instance
    _announce_if_available(instance, fields)
    row_data = []
    for group in rows:
        for row, row_fields in group.saved:
            row_changes, row_created = _save_row(row, list(row_fields), tenant=tenant)
            _announce_if_available(row, row_fields)
            if row_created or row_changes:
                row_data.append(
                    {
                        "rows": group.label,
                        "op": "added" if row_created else "changed",
                        "row": str(row),
                        "changes": row_changes,
                    }
                )
        for row in group.deleted:
            row_data.append({"rows": group.label, "op": "removed", "row": str(row)})
            row.delete()
    if created or changes or row_data:
        data = {"changes": changes}
        if row_data:
            data["rows"] = row_data
        record_activity(
            tenant=tenant,
            action=_action_name(instance, "created" if created else "updated"),
            actor=actor,
            target=instance,
            data=data,
        )
    return instance


@transaction.atomic
def save_record_with_presence(
    *, instance, fields: list[str], actor: Actor, rows: list[RowChanges] = ()
) -> list[Membership]:
    """`save_tenant_record` for a tenant with its agents (inline rows) or for one agent,
    where presence edits go through `set_agent_presence` (source "admin", its own
    activity row, waiting work retried when someone comes online) and every other field
    through the one door; one transaction. A new agent is created with the presence it
    was given, marked as set by an admin.

    Returns the agents who went away with this save (set offline, or deactivated), whose
    open work the admin then offers to redistribute."""
    fields = list(fields)
    agents = [(row, row_fields) for group in rows for row, row_fields in group.saved]
    if isinstance(instance, Membership):
        agents.insert(0, (instance, fields))
    now = timezone.now()
    presence_edits, gone = [], []
    for agent, agent_fields in agents:
        if not isinstance(agent, Membership):
            continue
        if agent._state.adding:
            agent.presence_source = PresenceSource.ADMIN
            agent.presence_changed_at = now
            continue
        if "is_active" in agent_fields and not agent.is_active:
            gone.append(agent)
        if "presence" in agent_fields:
            # Written by set_agent_presence below; until then the row keeps its own.
            agent_fields.remove("presence")
            presence_edits.append((agent, agent.presence))
            agent.presence = (
                Membership.objects.for_tenant(agent.tenant_id)
                .values_list("presence", flat=True)
                .get(pk=agent.pk)
            )
    # First, and even with nothing else changed: it checks that the actor may.
    save_tenant_record(instance=instance, fields=fields, actor=actor, rows=rows)
    for agent, presence in presence_edits:
        updated = set_agent_presence(
            membership=agent, presence=presence, actor=actor, source=PresenceSource.ADMIN
        )
        agent.presence, agent.presence_source = updated.presence, updated.presence_source
        agent.presence_changed_at = updated.presence_changed_at
        if updated.presence == Presence.OFFLINE:
            gone.append(agent)
    return list({agent.pk: agent for agent in gone}.values())


@transaction.atomic
def delete_tenant_record(*, instance, actor: Actor) -> None:
    """Delete one configuration record (and what cascades with it), recorded once, by
    name: the row written survives the record it names."""
    if isinstance(instance, Tenant):
        raise Forbidden(
            code="tenant_not_deletable",
            message="A tenant is deactivated, not deleted: deleting it would erase its "
            "audit trail.",
        )
    tenant = instance.tenant
    authorize_tenant_change(actor=actor, tenant=tenant)
    record_activity(
        tenant=tenant,
        action=_action_name(instance, "deleted"),
        actor=actor,
        target=instance,
        data={"row": str(instance)},
    )
    instance.delete()


# --- counters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CounterDrift:
    agent: Membership
    stored: int
    actual: int


def reconcile_agent_counter(
    *, counter: str, actual, count_now, fix: bool = False, tenant: Tenant | None = None
) -> list[CounterDrift]:
    """Compare every agent's `counter` (a Membership field kept with F()) with `actual`
    (an aggregate over their open work); repair if asked, recounting each agent with
    `count_now(locked_agent)`. Returns the counters that differ (with `fix`, the ones
    repaired and the value written), ordered by tenant and email."""
    agents = (
        Membership.all_tenants.select_related("user", "tenant")  # every tenant, or the one asked
        .annotate(actual=actual)
        .order_by("tenant__slug", "user__email", "pk")
    )
    if tenant is not None:
        agents = agents.filter(tenant=tenant)
    drifts = [
        CounterDrift(agent=agent, stored=getattr(agent, counter), actual=agent.actual)
        for agent in agents
        if getattr(agent, counter) != agent.actual
    ]
    if not fix:
        return drifts
    repaired = [_repair_counter(drift.agent, counter, count_now) for drift in drifts]
    return [drift for drift in repaired if drift is not None]


@transaction.atomic
def _repair_counter(agent: Membership, counter: str, count_now) -> CounterDrift | None:
    """Recount one agent under its row lock: work assigned or moved at the same time
    waits for it (or it for the work), so none is lost. One agent per transaction, so this
    never holds two agents at once (no deadlock with a move that locks two)."""
    locked = Membership.all_tenants.select_for_update().get(pk=agent.pk)
    actual = count_now(locked)
    stored = getattr(locked, counter)
    if stored == actual:
        return None  # put right in the meantime
    Membership.all_tenants.filter(pk=locked.pk).update(**{counter: actual})
    return CounterDrift(agent=agent, stored=stored, actual=actual)
