from teams.routing.config import resolve_config
from teams.routing.engine import PickRefused, RoutingDecision, route
from teams.routing.picking import ROUTED_AGENT, Cte, Pool
from teams.routing.reasons import UnassignedReason

__all__ = [
    "ROUTED_AGENT",
    "Cte",
    "PickRefused",
    "Pool",
    "RoutingDecision",
    "UnassignedReason",
    "resolve_config",
    "route",
]
