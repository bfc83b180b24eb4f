"""Lead emails: every Notification with email_status "pending" becomes one email.

`enqueue_notification_emails` is registered on commit by the services that create
notifications; delivery, templates and retries live below.
"""

import logging

from config.tasks import enqueue

logger = logging.getLogger("leads.emails")


def enqueue_notification_emails(notification_ids: list[str]) -> bool:
    """Queue the emails of these notifications; False when the broker is down (the
    periodic job re-enqueues pending ones)."""
    from leads.tasks import send_notification_emails  # leads.tasks imports this module

    return enqueue(send_notification_emails, [str(i) for i in notification_ids])
