from django.db import models


class UnassignedReason(models.TextChoices):
    NO_AGENTS = "no_agents", "No agents found (team, roles and default team are empty)"
    MANUAL_STRATEGY = "manual_strategy", "Strategy is manual"
    TEAM_CLOSED = "team_closed", "Team is closed by its schedule"
    ASSIGNMENT_DISABLED = "assignment_disabled", "Assignment config is disabled"
    ALL_AWAY = "all_away", "Every agent is away or offline"
    ALL_AT_CAPACITY = "all_at_capacity", "Every available agent is at capacity"
    NOT_ACCEPTED = "not_accepted", "Nobody accepted it within the accept window"
