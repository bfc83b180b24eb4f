from dataclasses import dataclass

SYSTEM = "system"
API_KEY = "api_key"


@dataclass(frozen=True)
class Actor:
    """Who performs a change, as two separate facts: the person (`label`: an email,
    "system", or "api_key" for a key acting on nobody's behalf) and how they acted
    (`via`: "admin", "api_key:wk_…", "api", "agent_page", "job:<name>",
    "command:<name>"). One person stays one actor however they act, so the audit log can
    be filtered by person and by channel independently.

    `user` and `membership` are the person's rows when a person acted; services check
    permissions against them, the audit log links to them.
    """

    label: str
    membership: object | None = None
    via: str = ""
    user: object | None = None

    @property
    def person_user(self):
        if self.user is not None:
            return self.user
        return self.membership.user if self.membership is not None else None

    @classmethod
    def system(cls, via: str = "") -> "Actor":
        return cls(label=SYSTEM, via=via)

    @classmethod
    def for_job(cls, name: str) -> "Actor":
        return cls.system(via=f"job:{name}")

    @classmethod
    def for_command(cls, name: str) -> "Actor":
        return cls.system(via=f"command:{name}")

    @classmethod
    def for_membership(cls, membership, via: str = "") -> "Actor":
        return cls(
            label=membership.user.email, membership=membership, user=membership.user, via=via
        )

    @classmethod
    def for_api_key(cls, api_key, on_behalf_of=None) -> "Actor":
        """A key request: the person is the admin it names (a membership), else the key."""
        via = f"api_key:{api_key.prefix}"
        if on_behalf_of is not None:
            return cls.for_membership(on_behalf_of, via=via)
        return cls(label=API_KEY, via=via)

    @classmethod
    def for_admin(cls, user, membership=None) -> "Actor":
        """A person in the Django admin: recorded as that person, superuser or not."""
        return cls(label=user.email, membership=membership, user=user, via="admin")
