"""The agent pages' header: who I am as an agent, my presence, my unread notices."""

from functools import cached_property

from teams.models import Presence
from workspace.selectors import agent_memberships, unread_notice_count


def memberships_of_request(request) -> list:
    """The logged-in user's active memberships, read once per request (the header and
    the view both need them)."""
    if not hasattr(request, "_workspace_memberships"):
        user = request.user
        request._workspace_memberships = (
            agent_memberships(user=user) if user.is_authenticated else []
        )
    return request._workspace_memberships


class AgentHeader:
    """Read only when a template asks: the admin and the login page render with this
    context processor too, and must not pay for the header's queries."""

    def __init__(self, request):
        self.request = request

    @cached_property
    def memberships(self) -> list:
        return memberships_of_request(self.request)

    @cached_property
    def is_agent(self) -> bool:
        return bool(self.memberships)

    @cached_property
    def unread_count(self) -> int:
        return unread_notice_count(user=self.request.user) if self.is_agent else 0

    @cached_property
    def presence(self) -> str:
        """The presence all of the user's agents share, or "" when their tenants
        disagree (an admin or the API set one of them differently)."""
        values = {m.presence for m in self.memberships}
        return values.pop() if len(values) == 1 else ""

    @property
    def presence_choices(self):
        return Presence.choices


def agent_header(request) -> dict:
    return {"agent_header": AgentHeader(request)}
