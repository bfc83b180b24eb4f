"""Assignment strategies: a registry of the names and what each means. The picking
itself is SQL (teams.routing.picking), one ORDER BY per strategy."""

from teams.models import Strategy


class AssignmentStrategy:
    name: str
    picks: bool = True


STRATEGIES: dict[str, AssignmentStrategy] = {}


def register(cls):
    STRATEGIES[cls.name] = cls()
    return cls


def get_strategy(name: str) -> AssignmentStrategy:
    return STRATEGIES.get(name) or STRATEGIES[Strategy.ROUND_ROBIN]


@register
class RoundRobin(AssignmentStrategy):
    """Agents in a fixed order (by id); each pick takes the next eligible agent after the
    pool's last one, wrapping round."""

    name = Strategy.ROUND_ROBIN


@register
class LeastBusy(AssignmentStrategy):
    """Fewest open items (the kind of work's counter); on a tie, the agent who has waited
    longest since an assignment (never assigned first), then the lowest id."""

    name = Strategy.LEAST_BUSY


@register
class Manual(AssignmentStrategy):
    """Never picks: a person assigns the work."""

    name = Strategy.MANUAL
    picks = False
