"""How the API (and webhook events) show leads."""

from rest_framework import serializers

from leads.formatting import lead_url


class AgentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField(source="display_name")
    email = serializers.EmailField(source="user.email")


class LeadOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    phone = serializers.CharField()
    email = serializers.CharField()
    source = serializers.CharField()
    status = serializers.CharField()
    team_id = serializers.UUIDField(allow_null=True)
    assigned_agent = AgentOutput(allow_null=True)
    assigned_at = serializers.DateTimeField(allow_null=True)
    unassigned_reason = serializers.CharField()
    previous_agent_id = serializers.UUIDField(allow_null=True)
    reassignment_count = serializers.IntegerField()
    reassignment_reason = serializers.CharField()
    reassigned_at = serializers.DateTimeField(allow_null=True)
    claim_deadline = serializers.DateTimeField(allow_null=True)
    claimed_at = serializers.DateTimeField(allow_null=True)
    claim_sla_breached_at = serializers.DateTimeField(allow_null=True)
    contact_deadline = serializers.DateTimeField(allow_null=True)
    contacted_at = serializers.DateTimeField(allow_null=True)
    contact_sla_breached_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    url = serializers.SerializerMethodField()

    def get_url(self, lead) -> str:
        return lead_url(lead)


class ReassignmentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    lead_id = serializers.UUIDField()
    from_agent_id = serializers.UUIDField(allow_null=True)
    to_agent_id = serializers.UUIDField()
    reassigned_by_id = serializers.UUIDField(allow_null=True)
    reason = serializers.CharField()
    stage = serializers.CharField()
    notes = serializers.CharField()
    created_at = serializers.DateTimeField()


class LeadDetailOutput(LeadOutput):
    reassignments = ReassignmentOutput(many=True)
