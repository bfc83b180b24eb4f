import uuid
import zoneinfo

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone

from core.scoping import TenantOwnedModel

WATERFALL_TIERS = ("team", "member", "admin", "super_admin")
DEFAULT_WATERFALL = list(WATERFALL_TIERS)


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not a known IANA time zone (e.g. Europe/Berlin).")


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email, password, **extra):
        if not email:
            raise ValueError("Users need an email address.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def get_by_natural_key(self, username):
        # Emails are stored in lower case; logging in with `Ann@Example.com` must work.
        return super().get_by_natural_key((username or "").strip().lower())

    def create_user(self, email, password=None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email, password=None, **extra):
        extra.update(is_staff=True, is_superuser=True)
        return self._create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who logs in with an email address. Their work in a tenant is a Membership."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(
        default=False, help_text="Can log in to the admin site (tenant admins and staff)."
    )
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="user_email_ci_unique"),
        ]

    def __str__(self):
        return self.email

    def clean(self):
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()

    def get_full_name(self):
        return self.full_name or self.email

    def get_short_name(self):
        return self.full_name.split(" ")[0] if self.full_name else self.email


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    claim_window_minutes = models.PositiveSmallIntegerField(
        default=5, help_text="Minutes an assigned agent has to claim a new lead."
    )
    contact_window_minutes = models.PositiveSmallIntegerField(
        default=5, help_text="Minutes a claiming agent has to contact the lead."
    )
    auto_reassign_on_breach = models.BooleanField(
        default=False,
        help_text="When a lead breaches its claim or contact window, route it to another agent.",
    )
    confirmation_quiet_period_seconds = models.PositiveIntegerField(
        default=600,
        help_text=(
            "A handover to a conversation that is already open sends the customer the "
            '"Connecting you to an agent..." message again only when its agent changed or '
            "this many seconds passed since the last one. 0 sends it on every handover."
        ),
    )
    api_rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Requests per minute allowed for each of this tenant's API keys; beyond it the "
            "API answers 429. Empty: no limit."
        ),
    )
    auto_away_minutes = models.PositiveSmallIntegerField(
        default=10,
        help_text=(
            "An agent who went online from the agent pages becomes away after this many "
            "minutes without a heartbeat from them. Presence set by an admin or the API "
            "stays until changed."
        ),
    )
    session_accept_window_minutes = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Minutes an agent has to accept a conversation assigned to them before it "
            "moves to another agent. Empty: no accept window."
        ),
    )
    session_accept_max_misses = models.PositiveSmallIntegerField(
        default=3,
        help_text=(
            "After this many missed accept windows a conversation stays unassigned "
            "(reason not_accepted) and the admins are told."
        ),
    )
    is_active = models.BooleanField(default=True)
    # Kept by the webhooks app in the transaction that changes an endpoint, so that
    # changes of tenants without webhooks skip looking for endpoints.
    has_active_webhooks = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(claim_window_minutes__gte=1), name="tenant_claim_window_positive"
            ),
            models.CheckConstraint(
                condition=Q(contact_window_minutes__gte=1), name="tenant_contact_window_positive"
            ),
            models.CheckConstraint(
                condition=Q(auto_away_minutes__gte=1), name="tenant_auto_away_positive"
            ),
            models.CheckConstraint(
                condition=Q(session_accept_window_minutes__isnull=True)
                | Q(session_accept_window_minutes__gte=1),
                name="tenant_accept_window_positive",
            ),
            models.CheckConstraint(
                condition=Q(session_accept_max_misses__gte=1),
                name="tenant_accept_max_misses_positive",
            ),
            models.CheckConstraint(
                condition=Q(api_rate_limit_per_minute__isnull=True)
                | Q(api_rate_limit_per_minute__gte=1),
                name="tenant_api_rate_limit_positive",
            ),
        ]

    def __str__(self):
        return self.name


class Role(models.TextChoices):
    MEMBER = "member", "Member"
    ADMIN = "admin", "Admin"
    SUPER_ADMIN = "super_admin", "Super admin"


ADMIN_ROLES = (Role.ADMIN, Role.SUPER_ADMIN)


class Presence(models.TextChoices):
    """Whether an agent takes new work: only `online` agents are assigned any."""

    ONLINE = "online", "Online"
    AWAY = "away", "Away"
    OFFLINE = "offline", "Offline"


class PresenceSource(models.TextChoices):
    """Who set an agent's presence last. Only presence set from the agent pages lapses
    to away when the pages stop sending heartbeats; the others stay until changed."""

    PAGE = "page", "Agent pages"
    ADMIN = "admin", "Admin"
    API = "api", "API"
    SYSTEM = "system", "System"


class Membership(TenantOwnedModel):
    """A user's membership in a tenant: this is the agent. Its id is the "agent id"."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by membership_one_per_user, which leads with it (tests/core/test_indexes.py).
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="memberships", db_index=False
    )
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    is_active = models.BooleanField(default=True)
    presence = models.CharField(
        max_length=10,
        choices=Presence.choices,
        default=Presence.ONLINE,
        help_text="Only online agents get new conversations and leads.",
    )
    presence_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    presence_source = models.CharField(
        max_length=10, choices=PresenceSource.choices, blank=True, editable=False
    )
    # The agent pages' latest heartbeat; auto-away reads it for page-set presence only.
    last_seen_at = models.DateTimeField(null=True, blank=True, editable=False)
    email_on_conversation = models.BooleanField(
        default=False,
        help_text="Also email the agent when a conversation is assigned or transferred to them.",
    )
    capacity = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most open conversations or leads at once; empty means no limit.",
    )
    # Never negative: the named CHECK constraints below say so (a PositiveIntegerField
    # would add a second, identical one, which every UPDATE of an agent row evaluates).
    current_lead_count = models.IntegerField(default=0, editable=False)
    # Open sessions assigned to the agent, kept with F() in the transaction that assigns,
    # moves or closes one (like current_lead_count); `reconcile_counters` repairs drift.
    open_session_count = models.IntegerField(default=0, editable=False)
    last_assigned_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_manager_name = "all_tenants"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="membership_one_per_user"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
            models.CheckConstraint(
                condition=Q(current_lead_count__gte=0), name="membership_lead_count_nonneg"
            ),
            models.CheckConstraint(
                condition=Q(open_session_count__gte=0), name="membership_session_count_nonneg"
            ),
            models.CheckConstraint(
                condition=Q(presence__in=Presence.values), name="membership_presence_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "role", "is_active"]),
            # The routing engine picks in SQL by walking one of these from its start and
            # stopping at the first eligible agent, so a pick costs the same in a pool of
            # 1 or 2,000 (teams.routing.picking). Only online, active agents are in them.
            models.Index(
                "tenant",
                "role",
                "id",
                condition=Q(presence="online", is_active=True),
                name="membership_rr_by_role",
            ),
            models.Index(
                "tenant",
                "open_session_count",
                models.F("last_assigned_at").asc(nulls_first=True),
                "id",
                condition=Q(presence="online", is_active=True),
                name="membership_lb_sessions",
            ),
            models.Index(
                "tenant",
                "current_lead_count",
                models.F("last_assigned_at").asc(nulls_first=True),
                "id",
                condition=Q(presence="online", is_active=True),
                name="membership_lb_leads",
            ),
        ]

    def __str__(self):
        return f"{self.user.get_full_name()} ({self.get_role_display()}, {self.tenant})"

    @property
    def display_name(self) -> str:
        return self.user.get_full_name()

    @property
    def is_online(self) -> bool:
        return self.presence == Presence.ONLINE

    @property
    def is_tenant_admin(self) -> bool:
        return self.role in ADMIN_ROLES


class Team(TenantOwnedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    is_default = models.BooleanField(
        default=False,
        help_text="Handover falls back to this team's members when no tenant role has agents.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_manager_name = "all_tenants"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="team_name_unique_per_tenant"),
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(is_default=True), name="team_one_default_per_tenant"
            ),
        ]

    def __str__(self):
        return self.name


class TeamRole(TenantOwnedModel):
    """A label for a person's part in a team (e.g. "Senior agent", "Trainee")."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="team_roles")
    name = models.CharField(max_length=80)
    description = models.TextField(blank=True)

    class Meta:
        default_manager_name = "all_tenants"
        ordering = ["tenant", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="team_role_unique_per_tenant"),
        ]

    def __str__(self):
        return self.name


class TeamMember(TenantOwnedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="team_members")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="members")
    membership = models.ForeignKey(
        Membership, on_delete=models.CASCADE, related_name="team_memberships"
    )
    role = models.ForeignKey(
        TeamRole, on_delete=models.SET_NULL, null=True, blank=True, related_name="team_members"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_manager_name = "all_tenants"
        constraints = [
            models.UniqueConstraint(fields=["team", "membership"], name="team_member_once"),
        ]

    def __str__(self):
        return f"{self.membership.display_name} in {self.team}"

    def clean(self):
        super().clean()
        # An inline row has no tenant yet: it is the team's.
        tenant_id = self.tenant_id or (self.team.tenant_id if self.team_id else None)
        related = [self.team if self.team_id else None, self.role]
        related.append(self.membership if self.membership_id else None)
        for obj in related:
            if obj is not None and obj.tenant_id != tenant_id:
                raise ValidationError("Team, agent and role must belong to the same tenant.")


class TeamSchedule(TenantOwnedModel):
    """Opening hours of a team. When enabled and closed, nobody in the team is assigned."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="team_schedules")
    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="schedule")
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    is_enabled = models.BooleanField(default=True)

    class Meta:
        default_manager_name = "all_tenants"

    def __str__(self):
        return f"Schedule of {self.team}"

    def clean(self):
        super().clean()
        if self.team_id and self.tenant_id and self.team.tenant_id != self.tenant_id:
            raise ValidationError({"team": "The team belongs to another tenant."})


class Weekday(models.IntegerChoices):
    MONDAY = 0
    TUESDAY = 1
    WEDNESDAY = 2
    THURSDAY = 3
    FRIDAY = 4
    SATURDAY = 5
    SUNDAY = 6


class TeamOpeningHours(TenantOwnedModel):
    """One opening interval on one weekday, in the schedule's time zone.

    `closes_at` 00:00 means "until midnight"; a shift across midnight is two rows.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    schedule = models.ForeignKey(TeamSchedule, on_delete=models.CASCADE, related_name="hours")
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices)
    opens_at = models.TimeField()
    closes_at = models.TimeField(help_text="00:00 means midnight at the end of the day.")

    class Meta:
        default_manager_name = "all_tenants"
        ordering = ["schedule", "weekday", "opens_at"]
        verbose_name_plural = "team opening hours"
        constraints = [
            models.CheckConstraint(
                condition=Q(weekday__gte=0, weekday__lte=6), name="opening_hours_weekday_valid"
            ),
            models.CheckConstraint(
                condition=Q(closes_at__gt=models.F("opens_at")) | Q(closes_at="00:00"),
                name="opening_hours_close_after_open",
            ),
        ]

    def __str__(self):
        return f"{self.get_weekday_display()} {self.opens_at:%H:%M}-{self.closes_at:%H:%M}"


class TeamHoliday(TenantOwnedModel):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    schedule = models.ForeignKey(TeamSchedule, on_delete=models.CASCADE, related_name="holidays")
    date = models.DateField()
    name = models.CharField(max_length=120, blank=True)

    class Meta:
        default_manager_name = "all_tenants"
        ordering = ["schedule", "date"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "date"], name="team_holiday_once"),
        ]

    def __str__(self):
        return f"{self.date} {self.name}".strip()


class Strategy(models.TextChoices):
    ROUND_ROBIN = "round_robin", "Round robin"
    LEAST_BUSY = "least_busy", "Least busy"
    MANUAL = "manual", "Manual (never auto-assign)"


def default_assignment_settings() -> dict:
    return {"waterfall": list(DEFAULT_WATERFALL)}


class AssignmentConfig(TenantOwnedModel):
    """Routing rules of a team, or of the whole tenant when `team` is empty."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="assignment_configs")
    team = models.OneToOneField(
        Team, on_delete=models.CASCADE, null=True, blank=True, related_name="assignment_config"
    )
    is_enabled = models.BooleanField(default=True)
    strategy = models.CharField(
        max_length=20, choices=Strategy.choices, default=Strategy.ROUND_ROBIN
    )
    settings = models.JSONField(
        default=default_assignment_settings,
        blank=True,
        help_text='e.g. {"waterfall": ["team", "member", "admin", "super_admin"]}',
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        default_manager_name = "all_tenants"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"],
                condition=Q(team__isnull=True),
                name="assignment_config_one_per_tenant",
            ),
            models.CheckConstraint(
                condition=Q(strategy__in=Strategy.values), name="assignment_config_strategy_valid"
            ),
        ]

    def __str__(self):
        scope = self.team.name if self.team_id else "tenant default"
        return f"{self.get_strategy_display()} ({scope})"

    @property
    def waterfall(self) -> list[str]:
        settings = self.settings if isinstance(self.settings, dict) else {}
        waterfall = settings.get("waterfall")
        return list(waterfall) if isinstance(waterfall, list) and waterfall else DEFAULT_WATERFALL

    def clean(self):
        super().clean()
        if self.team_id and self.team.tenant_id != self.tenant_id:
            raise ValidationError({"team": "The team belongs to another tenant."})
        if not isinstance(self.settings, dict):
            raise ValidationError(
                {"settings": 'Settings must be an object, e.g. {"waterfall": [...]}.'}
            )
        waterfall = self.settings.get("waterfall", DEFAULT_WATERFALL)
        if not isinstance(waterfall, list) or not waterfall:
            raise ValidationError({"settings": "waterfall must be a list with at least one tier."})
        if any(t not in WATERFALL_TIERS for t in waterfall):
            raise ValidationError(
                {"settings": f"waterfall must be a list drawn from {', '.join(WATERFALL_TIERS)}."}
            )
        if len(set(waterfall)) != len(waterfall):
            raise ValidationError({"settings": "waterfall lists a tier twice."})


class ApiKey(TenantOwnedModel):
    """A tenant's key for the external API. Only a SHA-256 of the key is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=120)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        default_manager_name = "all_tenants"
        verbose_name = "API key"
        verbose_name_plural = "API keys"
        indexes = [models.Index(fields=["tenant", "is_active"])]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"


class RoundRobinCursor(TenantOwnedModel):
    """Where a pool's rotation stands: the agent picked last. The next pick is the first
    eligible agent with a greater id (wrapping round to the smallest).

    One row per pool and kind of work (a team, or a waterfall tier of a tenant). The pick
    statement locks the row (FOR UPDATE) and is the last statement before COMMIT (outside
    a transaction, a lock of its own comes just before it, in the same round trip), so
    concurrent picks from one pool queue for one statement only and each sees the
    previous one's agent: N agents get exactly 1/N of the work each.
    """

    # Indexed by round_robin_pool_once, which leads with it (tests/core/test_indexes.py).
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    pool_key = models.CharField(max_length=120)
    position = models.BigIntegerField(default=0)  # picks made: for people, not routing
    # A plain id, not a foreign key: checking one would lock the agent's row too.
    last_agent_id = models.UUIDField(null=True, blank=True)

    class Meta:
        default_manager_name = "all_tenants"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "pool_key"], name="round_robin_pool_once"),
        ]

    def __str__(self):
        return f"{self.pool_key} @ {self.position}"
