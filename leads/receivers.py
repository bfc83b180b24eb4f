from django.dispatch import receiver

from core.tasks import enqueue_on_commit
from teams.signals import agent_became_available


@receiver(agent_became_available, dispatch_uid="leads.retry_on_agent_available")
def retry_leads_when_an_agent_is_back(sender, tenant_id, agent_id, **kwargs):
    from leads.tasks import retry_unassigned_leads

    enqueue_on_commit(retry_unassigned_leads, tenant_id=str(tenant_id))
