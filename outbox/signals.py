from django.dispatch import Signal

# A message has finally failed (no attempt left, or refused for good). Sent inside the
# transaction that stores the outcome, so a receiver's writes (e.g. a `message.failed`
# webhook event) commit with it. Arguments: message (OutboundMessage), error (str).
message_failed = Signal()
