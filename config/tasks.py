"""Retry timing for tasks that talk to outside services (CRM, mail).

Enqueueing lives in core.tasks.
"""

import random

BACKOFF_CAP_SECONDS = 300
BACKOFF_JITTER = 0.1


def backoff_seconds(retries: int, base_seconds: float, *, jitter: bool = True) -> float:
    """base * 2**retries, capped at 5 minutes, plus up to 10% jitter so that work that
    failed together (a CRM or mail outage) does not come back all at once."""
    wait = min(float(base_seconds) * 2 ** max(0, retries), BACKOFF_CAP_SECONDS)
    return wait + (random.uniform(0, wait * BACKOFF_JITTER) if jitter else 0.0)


def retry_or_give_up(
    task, exc, *, max_retries: int, countdown: float, give_up, exhausted: bool = False
) -> str:
    """In a bound task's `except` block: retry later, or, with retries spent (or
    `exhausted` by the caller's own count), record the failure with `give_up()`."""
    if exhausted or task.request.retries >= max_retries:
        give_up()
        return "failed"
    raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries) from None
