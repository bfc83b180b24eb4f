from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """Who performs a change: an agent, an API key, or the system itself."""

    label: str
    membership: object | None = None

    @classmethod
    def system(cls) -> "Actor":
        return cls(label="system")

    @classmethod
    def for_membership(cls, membership) -> "Actor":
        return cls(label=membership.user.email, membership=membership)

    @classmethod
    def for_api_key(cls, api_key) -> "Actor":
        return cls(label=f"api_key:{api_key.prefix}")
