"""Running a transaction again when PostgreSQL chose it as a deadlock's victim."""

import functools

from django.db import OperationalError, connection

DEADLOCK_DETECTED = "40P01"


def is_deadlock(exc: BaseException) -> bool:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) == DEADLOCK_DETECTED


def retry_on_deadlock(function=None, *, attempts: int = 3):
    """Run a service that opens its own transaction again (up to `attempts` times in all)
    when it lost a deadlock. Two moves of work between the same two agents in opposite
    directions lock the agents in opposite orders (the pick locks the new agent first):
    rare, harmless to repeat, and not the user's problem. Inside an outer transaction the
    whole transaction is lost, so there it is not retried."""

    def decorate(service):
        @functools.wraps(service)
        def wrapper(*args, **kwargs):
            for attempt in range(1, attempts + 1):
                try:
                    return service(*args, **kwargs)
                except OperationalError as exc:
                    if attempt == attempts or not is_deadlock(exc) or connection.in_atomic_block:
                        raise

        return wrapper

    return decorate(function) if function is not None else decorate
