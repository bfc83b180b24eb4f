"""The default team as the waterfall's fallback: a last resort for work sent without a
team, whose members' presence decides. Its schedule is the team's when a request names
it (`team_closed`); the fallback does not consult it, as the routing rules say."""

import pytest
import time_machine

from teams.routing import UnassignedReason, route
from teams.routing.engine import DEFAULT_TEAM_TIER
from tests.factories import (
    AssignmentConfigFactory,
    TeamFactory,
    TeamMemberFactory,
    TeamScheduleFactory,
)

pytestmark = pytest.mark.django_db


def test_the_default_team_takes_work_sent_without_a_team_whatever_its_hours(tenant):
    default = TeamFactory(tenant=tenant, is_default=True)
    online = TeamMemberFactory(team=default, membership__role="admin").membership
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["member"]})
    TeamScheduleFactory(team=default, timezone="UTC")  # enabled, no hours: closed

    with time_machine.travel("2026-03-02T10:00:00Z", tick=False):
        named = route(tenant=tenant, team=default, work="sessions")
        fallback = route(tenant=tenant, team=None, work="sessions")

    assert named.agent is None and named.reason == UnassignedReason.TEAM_CLOSED
    assert fallback.agent == online and fallback.tier == DEFAULT_TEAM_TIER
