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


class ReassignmentResultOutput(ReassignmentOutput):
    """The history row of a reassignment just made, and what it did to the deadline the
    lead was running (the reassign-lead answer)."""

    window = serializers.ChoiceField(
        choices=["claim", "contact"],
        allow_null=True,
        help_text="The SLA window the lead is in now: claim (new) or contact (claimed); "
        "null once contacted.",
    )
    deadline = serializers.DateTimeField(
        allow_null=True, help_text="That window's deadline, as the new agent has it."
    )
    deadline_passed = serializers.BooleanField(
        help_text="The deadline running when the lead was reassigned had already passed."
    )
    window_restarted = serializers.BooleanField(
        help_text="The reassignment started the window again from now: always for "
        "`unclaimed` and `no_contact`; for `manual` only with `restart_window`."
    )

    def to_representation(self, result):
        row = ReassignmentOutput(result.reassignment).data
        return {
            **row,
            "window": result.window,
            "deadline": self.fields["deadline"].to_representation(result.deadline)
            if result.deadline is not None
            else None,
            "deadline_passed": result.deadline_passed,
            "window_restarted": result.window_restarted,
        }


class WarningOutput(serializers.Serializer):
    """Something the caller should know about a request that succeeded."""

    code = serializers.CharField(help_text="e.g. `contact_deadline_passed`.")
    message = serializers.CharField()


def reassignment_warning(result) -> dict | None:
    """The answer's `warning` when the new agent got a deadline that had already passed
    (a manual reassignment without `restart_window`), else None."""
    if not result.breach_at_once:
        return None
    agent = result.lead.assigned_agent
    return {
        "code": f"{result.window}_deadline_passed",
        "message": (
            f"{result.passed_phrase()} and was kept: {agent.display_name} is in breach at "
            f"once. Send restart_window: true to give them a new {result.window} window."
        ),
    }
