"""Who is on the other end of a request: the one rule every throttle counts by."""

from django.conf import settings


def client_address(request) -> str | None:
    """REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies the address the outermost one
    appended to X-Forwarded-For. Counted from the right: the client can put anything it
    likes to the left, and reading that would give it a fresh address per attempt."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies > 0:
        forwarded = [
            entry.strip()
            for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            if entry.strip()
        ]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR")
