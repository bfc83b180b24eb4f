from teams.routing.config import resolve_config
from teams.routing.engine import PickRefused, RoutingDecision, advance_cursor, route
from teams.routing.picking import ROUTED_AGENT, Cte, Pool
from teams.routing.reasons import UnassignedReason

__all__ = [
    "ROUTED_AGENT",
    "Cte",
    "PickRefused",
    "Pool",
    "RoutingDecision",
    "UnassignedReason",
    "advance_cursor",
    "resolve_config",
    "route",
]
