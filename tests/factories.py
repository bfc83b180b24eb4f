import factory
from factory.django import DjangoModelFactory

from teams.models import (
    AssignmentConfig,
    Membership,
    Role,
    Team,
    TeamMember,
    TeamSchedule,
    Tenant,
    User,
)

TEST_PASSWORD = "correct-horse-battery-staple"


class UserFactory(DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@example.test")
    full_name = factory.Faker("name")
    password = factory.PostGenerationMethodCall("set_password", TEST_PASSWORD)

    @factory.post_generation
    def _save_password(obj, create, extracted, **kwargs):
        if create:
            obj.save(update_fields=["password"])


class TenantFactory(DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")


class MembershipFactory(DjangoModelFactory):
    """An agent: a user's membership in a tenant."""

    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MEMBER


class TeamFactory(DjangoModelFactory):
    class Meta:
        model = Team

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Team {n}")


class TeamMemberFactory(DjangoModelFactory):
    class Meta:
        model = TeamMember

    team = factory.SubFactory(TeamFactory)
    tenant = factory.SelfAttribute("team.tenant")
    membership = factory.SubFactory(MembershipFactory, tenant=factory.SelfAttribute("..tenant"))


class TeamScheduleFactory(DjangoModelFactory):
    class Meta:
        model = TeamSchedule

    team = factory.SubFactory(TeamFactory)
    tenant = factory.SelfAttribute("team.tenant")
    timezone = "UTC"


class AssignmentConfigFactory(DjangoModelFactory):
    class Meta:
        model = AssignmentConfig

    tenant = factory.SubFactory(TenantFactory)
    team = None
