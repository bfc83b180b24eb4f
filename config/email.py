import sys

from django.core.mail.backends.console import EmailBackend


class StderrConsoleBackend(EmailBackend):
    """Development email: printed to stderr, next to the logs, so commands whose stdout
    is data (`seed_demo --json`) stay clean."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("stream", sys.stderr)
        super().__init__(*args, **kwargs)
