"""The guard for addresses that tenants give us and our workers call (CRM apiUrl,
webhook endpoints): tenant-supplied URLs must not aim a worker at internal services
(SSRF).

https only (OUTBOUND_ALLOW_HTTP for local testing), no credentials or fragment, and no
loopback, private, link-local or reserved address (OUTBOUND_ALLOW_PRIVATE_NETWORKS).
The host is resolved when the URL is saved and again before every send; a DNS answer
that changes between that check and the connect is not covered (an egress proxy would
close that gap).
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


def outbound_url_problems(url: str, *, field: str, allow_query: bool = False) -> list[str]:
    """Why `url` may not be called, each problem naming `field`; [] when it may."""
    url = url or ""
    parts = urlsplit(url)
    problems = []
    allowed_schemes = {"https", "http"} if settings.OUTBOUND_ALLOW_HTTP else {"https"}
    if parts.scheme not in allowed_schemes:
        problems.append(f"{field} must start with {' or '.join(sorted(allowed_schemes))}://")
    if parts.username or parts.password:
        problems.append(f"{field} must not contain credentials")
    if "#" in url or ("?" in url and not allow_query):
        what = "a fragment" if allow_query else "a query string or fragment"
        problems.append(f"{field} must not have {what}")
    if not parts.hostname:
        problems.append(f"{field} has no host")
    elif not settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS:
        try:
            addresses = {
                info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)
            }
        except (socket.gaierror, UnicodeError, ValueError):
            addresses = set()  # unresolvable now: the send fails as a connection error
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global:
                problems.append(f"{field} resolves to a non-public address ({ip})")
                break
    return problems
