"""Invariants the database itself enforces, and the fail-closed tenant scoping.

Each violation is written straight through the ORM (no form, no service) so the only
thing that can stop it is the constraint in the schema. Every failing write sits in its
own `transaction.atomic()` block, so the test's transaction stays usable afterwards.
"""

from datetime import time

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from core.scoping import UnscopedQueryError
from teams.models import (
    AssignmentConfig,
    Membership,
    Team,
    TeamOpeningHours,
    Tenant,
    User,
)
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamScheduleFactory,
    TenantFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


# --- Default team -----------------------------------------------------------------------


def test_a_tenant_cannot_have_two_default_teams(tenant):
    TeamFactory(tenant=tenant, name="Sales", is_default=True)

    with pytest.raises(IntegrityError), transaction.atomic():
        Team.objects.create(tenant=tenant, name="Support", is_default=True)

    assert list(Team.objects.for_tenant(tenant).filter(is_default=True).values_list("name")) == [
        ("Sales",)
    ]


def test_two_tenants_may_each_have_a_default_team(tenant, other_tenant):
    TeamFactory(tenant=tenant, name="Sales", is_default=True)
    TeamFactory(tenant=other_tenant, name="Sales", is_default=True)

    assert Team.all_tenants.filter(is_default=True).count() == 2


def test_non_default_teams_next_to_the_default_are_fine(tenant):
    TeamFactory(tenant=tenant, name="Sales", is_default=True)
    TeamFactory(tenant=tenant, name="Support", is_default=False)
    TeamFactory(tenant=tenant, name="Billing", is_default=False)

    assert Team.objects.for_tenant(tenant).count() == 3


# --- Team names -------------------------------------------------------------------------


def test_team_name_is_unique_within_a_tenant(tenant):
    TeamFactory(tenant=tenant, name="Sales")

    with pytest.raises(IntegrityError), transaction.atomic():
        Team.objects.create(tenant=tenant, name="Sales")

    assert Team.objects.for_tenant(tenant).count() == 1


def test_the_same_team_name_is_fine_in_another_tenant(tenant, other_tenant):
    TeamFactory(tenant=tenant, name="Sales")
    TeamFactory(tenant=other_tenant, name="Sales")

    assert Team.all_tenants.filter(name="Sales").count() == 2


# --- Assignment configs -----------------------------------------------------------------


def test_only_one_tenant_wide_assignment_config(tenant):
    AssignmentConfigFactory(tenant=tenant, team=None)

    with pytest.raises(IntegrityError), transaction.atomic():
        AssignmentConfig.objects.create(tenant=tenant, team=None)

    assert AssignmentConfig.objects.for_tenant(tenant).filter(team__isnull=True).count() == 1


def test_each_tenant_has_its_own_tenant_wide_assignment_config(tenant, other_tenant):
    AssignmentConfigFactory(tenant=tenant, team=None)
    AssignmentConfigFactory(tenant=other_tenant, team=None)

    assert AssignmentConfig.all_tenants.filter(team__isnull=True).count() == 2


def test_only_one_assignment_config_per_team(tenant):
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team)

    with pytest.raises(IntegrityError), transaction.atomic():
        AssignmentConfig.objects.create(tenant=tenant, team=team)

    assert AssignmentConfig.objects.for_tenant(tenant).filter(team=team).count() == 1


def test_tenant_wide_and_per_team_configs_coexist(tenant):
    sales = TeamFactory(tenant=tenant, name="Sales")
    support = TeamFactory(tenant=tenant, name="Support")
    AssignmentConfigFactory(tenant=tenant, team=None)
    AssignmentConfigFactory(tenant=tenant, team=sales)
    AssignmentConfigFactory(tenant=tenant, team=support)

    assert AssignmentConfig.objects.for_tenant(tenant).count() == 3


# --- Memberships ------------------------------------------------------------------------


def test_a_user_joins_a_tenant_once(tenant):
    user = UserFactory()
    MembershipFactory(tenant=tenant, user=user)

    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(tenant=tenant, user=user, role="admin")

    assert Membership.objects.for_tenant(tenant).filter(user=user).count() == 1


def test_the_same_user_may_join_two_tenants(tenant, other_tenant):
    user = UserFactory()
    MembershipFactory(tenant=tenant, user=user)
    MembershipFactory(tenant=other_tenant, user=user)

    assert set(user.memberships.values_list("tenant__slug", flat=True)) == {"acme", "globex"}


def test_membership_role_must_be_a_known_role(tenant):
    user = UserFactory()

    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(tenant=tenant, user=user, role="owner")

    assert not Membership.all_tenants.filter(user=user).exists()


@pytest.mark.parametrize("role", ["member", "admin", "super_admin"])
def test_every_known_role_is_accepted(tenant, role):
    membership = Membership.objects.create(tenant=tenant, user=UserFactory(), role=role)

    membership.refresh_from_db()
    assert membership.role == role


# --- Users ------------------------------------------------------------------------------


def test_user_email_is_unique_ignoring_case(db):
    User.objects.create(email="Alice@Example.test")

    # A plain `unique=True` would let this through: only the Lower(email) index stops it.
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create(email="alice@example.TEST")

    assert User.objects.filter(email__iexact="alice@example.test").count() == 1


# --- Tenant windows ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["claim_window_minutes", "contact_window_minutes"])
def test_tenant_windows_are_at_least_one_minute(db, field):
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.create(name="Zero", slug="zero", **{field: 0})

    assert not Tenant.objects.filter(slug="zero").exists()


@pytest.mark.parametrize("field", ["claim_window_minutes", "contact_window_minutes"])
def test_a_one_minute_window_is_accepted(db, field):
    tenant = Tenant.objects.create(name="Quick", slug="quick", **{field: 1})

    tenant.refresh_from_db()
    assert getattr(tenant, field) == 1


# --- Opening hours ----------------------------------------------------------------------


@pytest.fixture
def schedule(tenant):
    return TeamScheduleFactory(team=TeamFactory(tenant=tenant))


def _hours(schedule, opens_at, closes_at):
    return TeamOpeningHours.objects.create(
        tenant=schedule.tenant,
        schedule=schedule,
        weekday=0,
        opens_at=opens_at,
        closes_at=closes_at,
    )


@pytest.mark.parametrize(
    ("opens_at", "closes_at"),
    [(time(17, 0), time(9, 0)), (time(9, 0), time(9, 0)), (time(0, 30), time(0, 15))],
    ids=["closes-before-opening", "zero-length", "early-morning-backwards"],
)
def test_opening_hours_must_close_after_they_open(schedule, opens_at, closes_at):
    with pytest.raises(IntegrityError), transaction.atomic():
        _hours(schedule, opens_at, closes_at)

    assert not schedule.hours.exists()


@pytest.mark.parametrize(
    ("opens_at", "closes_at"),
    [(time(9, 0), time(17, 0)), (time(22, 0), time(0, 0)), (time(0, 0), time(0, 0))],
    ids=["day-shift", "until-midnight", "whole-day"],
)
def test_valid_opening_hours_are_stored(schedule, opens_at, closes_at):
    _hours(schedule, opens_at, closes_at)

    assert list(schedule.hours.values_list("opens_at", "closes_at")) == [(opens_at, closes_at)]


# --- Fail-closed tenant scoping ---------------------------------------------------------


def test_an_unscoped_query_raises(tenant):
    TeamFactory(tenant=tenant, name="Sales")

    with pytest.raises(UnscopedQueryError, match=r"Team\.objects needs a tenant"):
        Team.objects.filter(name="Sales")
    with pytest.raises(UnscopedQueryError):
        Team.objects.all()
    with pytest.raises(UnscopedQueryError):
        Team.objects.get(name="Sales")
    with pytest.raises(UnscopedQueryError):
        Team.objects.count()


def test_for_tenant_returns_only_that_tenants_rows(tenant, other_tenant):
    TeamFactory(tenant=tenant, name="Sales")
    TeamFactory(tenant=tenant, name="Support")
    TeamFactory(tenant=other_tenant, name="Sales")
    TeamFactory(tenant=other_tenant, name="Globex only")

    mine = Team.objects.for_tenant(tenant)
    theirs = Team.objects.for_tenant(other_tenant)

    assert sorted(mine.values_list("name", flat=True)) == ["Sales", "Support"]
    assert {t.tenant_id for t in mine} == {tenant.id}
    assert sorted(theirs.values_list("name", flat=True)) == ["Globex only", "Sales"]
    assert not mine.filter(name="Globex only").exists()


def test_for_tenant_refuses_none(tenant):
    with pytest.raises(UnscopedQueryError):
        Team.objects.for_tenant(None)


def test_create_without_a_tenant_raises(db):
    with pytest.raises(UnscopedQueryError):
        Team.objects.create(name="Orphans")

    assert not Team.all_tenants.filter(name="Orphans").exists()


def test_create_with_a_tenant_works(tenant):
    team = Team.objects.create(tenant=tenant, name="Sales")

    assert Team.objects.for_tenant(tenant).get().pk == team.pk


# --- AssignmentConfig.clean -------------------------------------------------------------


def _config(tenant, waterfall, team=None):
    return AssignmentConfig(tenant=tenant, team=team, settings={"waterfall": waterfall})


def test_a_valid_waterfall_passes_validation(tenant):
    team = TeamFactory(tenant=tenant)
    config = _config(tenant, ["member", "team", "super_admin"], team=team)

    config.full_clean()  # does not raise

    assert config.waterfall == ["member", "team", "super_admin"]


@pytest.mark.parametrize(
    "waterfall",
    [["team", "manager"], ["owner"], "team", None],
    ids=["unknown-tier", "only-unknown-tier", "not-a-list", "null"],
)
def test_waterfall_with_unknown_tiers_is_rejected(tenant, waterfall):
    with pytest.raises(ValidationError) as excinfo:
        _config(tenant, waterfall).clean()

    assert "settings" in excinfo.value.message_dict
    assert "waterfall must be a list" in excinfo.value.message_dict["settings"][0]


def test_waterfall_listing_a_tier_twice_is_rejected(tenant):
    with pytest.raises(ValidationError) as excinfo:
        _config(tenant, ["team", "admin", "team"]).clean()

    assert excinfo.value.message_dict["settings"] == ["waterfall lists a tier twice."]


def test_a_team_of_another_tenant_is_rejected(tenant, other_tenant):
    foreign_team = TeamFactory(tenant=other_tenant)

    with pytest.raises(ValidationError) as excinfo:
        _config(tenant, ["team", "member"], team=foreign_team).clean()

    assert excinfo.value.message_dict["team"] == ["The team belongs to another tenant."]


def test_scoped_queryset_fills_in_and_insists_on_its_tenant(db):
    tenant_a, tenant_b = TenantFactory(), TenantFactory()

    team = Team.objects.for_tenant(tenant_a).create(name="Filled in")
    assert team.tenant_id == tenant_a.id

    with pytest.raises(UnscopedQueryError):
        Team.objects.for_tenant(tenant_a).create(name="Smuggled", tenant=tenant_b)
    with pytest.raises(UnscopedQueryError):
        Team.objects.for_tenant(tenant_a).update(tenant=tenant_b)
    with pytest.raises(UnscopedQueryError):
        Team.objects.for_tenant(tenant_a).bulk_create([Team(name="Other", tenant=tenant_b)])
    assert not Team.all_tenants.filter(tenant=tenant_b).exists()


def test_assignment_config_settings_must_be_an_object(db):
    config = AssignmentConfigFactory.build(tenant=TenantFactory(), settings=["team"])
    with pytest.raises(ValidationError) as excinfo:
        config.clean()
    assert "settings" in excinfo.value.message_dict
    empty = AssignmentConfigFactory.build(tenant=TenantFactory(), settings={"waterfall": []})
    with pytest.raises(ValidationError):
        empty.clean()
