import datetime

from teams.models import TeamSchedule
from teams.routing.config import schedule_snapshot


def schedule_is_open(schedule: TeamSchedule, at: datetime.datetime) -> bool:
    """Whether the team takes work at `at`: weekly hours in the schedule's time zone,
    minus holidays (dates in that time zone). A disabled schedule is always open.

    Routing reads the cached snapshot (teams.routing.config); this reads the rows."""
    return schedule_snapshot(schedule).is_open(at)
