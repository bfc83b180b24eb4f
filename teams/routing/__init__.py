from teams.routing.engine import RoutingDecision, resolve_config, route
from teams.routing.reasons import UnassignedReason

__all__ = ["RoutingDecision", "UnassignedReason", "resolve_config", "route"]
