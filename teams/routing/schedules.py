import datetime
from zoneinfo import ZoneInfo

from teams.models import TeamSchedule

MIDNIGHT = datetime.time(0, 0)


def schedule_is_open(schedule: TeamSchedule, at: datetime.datetime) -> bool:
    """Whether the team takes work at `at`: weekly hours in the schedule's time zone,
    minus holidays (dates in that time zone). A disabled schedule is always open."""
    if not schedule.is_enabled:
        return True
    local = at.astimezone(ZoneInfo(schedule.timezone))
    if schedule.holidays.filter(date=local.date()).exists():
        return False
    now = local.time()
    return any(
        hours.opens_at <= now and (hours.closes_at == MIDNIGHT or now < hours.closes_at)
        for hours in schedule.hours.filter(weekday=local.weekday())
    )
