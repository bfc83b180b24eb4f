"""Signal receivers of the agent pages, connected in WorkspaceConfig.ready()."""

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from teams.services import go_offline_after_logout


@receiver(user_logged_out, dispatch_uid="workspace.offline_after_logout")
def offline_after_logout(sender, request, user, **kwargs):
    # Logging out of the pages says "I have left": presence the pages set goes offline
    # (presence an admin or the tenant's system set stays theirs to change).
    if user is not None:
        go_offline_after_logout(user=user)
