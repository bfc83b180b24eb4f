from django.dispatch import Signal

# Sent after commit when an agent can take work again (became available or active).
# Apps that hold unassigned work (inbox sessions, leads) listen and retry routing.
# Arguments: tenant_id, agent_id.
agent_became_available = Signal()
