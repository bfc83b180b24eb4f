"""Writes for tenancy and people. Views, commands and the admin call these."""

import hashlib
import secrets
import string
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import record_activity
from core.actor import Actor
from teams.models import ApiKey, Membership, Role, Team, TeamMember, Tenant, User
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
def set_agent_availability(
    *, membership: Membership, is_available: bool, actor: Actor
) -> Membership:
    membership = (
        Membership.objects.for_tenant(membership.tenant_id)
        .select_for_update()
        .select_related("tenant", "user")
        .get(pk=membership.pk)
    )
    if membership.is_available == is_available:
        return membership
    membership.is_available = is_available
    membership.save(update_fields=["is_available"])
    record_activity(
        tenant=membership.tenant,
        action="membership.available" if is_available else "membership.away",
        actor=actor,
        target=membership,
    )
    if is_available and membership.is_active:
        announce_agent_available(membership=membership)
    return membership
