from django import template
from django.utils.text import Truncator

register = template.Library()

# Keys a bot or a web chat commonly puts its own summary under, best first.
SUMMARY_KEYS = ("summary", "lastMessage", "last_message", "topic", "reason")
MAX_PAIRS = 3


def _text(value, length: int) -> str:
    return Truncator(str(value)).chars(length)


@register.filter
def context_summary(context) -> str:
    """A line about what the customer wants, from the session's free-form context: its
    summary if the handover gave one, else its first few simple key/value pairs."""
    if not isinstance(context, dict):
        return ""
    for key in SUMMARY_KEYS:
        value = context.get(key)
        if isinstance(value, str) and value.strip():
            return _text(value.strip(), 160)
    pairs = [
        f"{_text(key, 30)}: {_text(value, 50)}"
        for key, value in context.items()
        if isinstance(value, str | int | float | bool) and str(value).strip()
    ][:MAX_PAIRS]
    return " · ".join(pairs)
