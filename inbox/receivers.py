from django.dispatch import receiver

from core.tasks import enqueue_on_commit
from teams.signals import agent_became_available


@receiver(agent_became_available, dispatch_uid="inbox.retry_on_agent_available")
def retry_sessions_when_an_agent_is_back(sender, tenant_id, agent_id, **kwargs):
    from inbox.tasks import retry_unassigned_sessions

    enqueue_on_commit(retry_unassigned_sessions, tenant_id=str(tenant_id))
