from django.dispatch import Signal

# Sent, inside the transaction that made it so, when an agent can take work again
# (became available or active). Apps that hold unassigned work (inbox sessions, leads)
# listen and retry routing; receivers defer their work to the commit
# (core.tasks.enqueue_on_commit), so a change that rolls back triggers nothing.
# Arguments: tenant_id, agent_id.
agent_became_available = Signal()
