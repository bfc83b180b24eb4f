import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from inbox.diagnostics import diagnose_handover
from inbox.models import InboxSession
from teams.management.commands._tenant_arg import resolve_tenant
from teams.models import Team

STYLE_FOR = {"OK": "SUCCESS", "PROBLEM": "ERROR", "INFO": "WARNING"}


class Command(BaseCommand):
    help = (
        "Run the 'session not assigned' checklist for a tenant: API keys, agents by role, "
        "default team, team members, assignment config, CRM integration."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--team", help="Team id, as sent in the handover's teamId.")
        parser.add_argument("--session", help="A session id to explain.")
        parser.add_argument("--json", action="store_true", dest="as_json")

    def handle(self, *args, tenant, team, session, as_json, **options):
        tenant_obj = resolve_tenant(tenant)
        team_obj = self._one(Team, tenant_obj, team, "team") if team else None
        session_obj = self._one(InboxSession, tenant_obj, session, "session") if session else None
        if session_obj is not None and team_obj is None:
            team_obj = session_obj.team
        report = diagnose_handover(tenant=tenant_obj, team=team_obj, session=session_obj)
        if as_json:
            self.stdout.write(json.dumps(report.as_dict(), default=str))
            return
        self.stdout.write(f"Handover checklist for {tenant_obj.name} ({tenant_obj.pk})")
        if team_obj is not None:
            self.stdout.write(f"Team: {team_obj.name} ({team_obj.pk})")
        for check in report.checks:
            style = getattr(self.style, STYLE_FOR[check.status])
            self.stdout.write(style(f"[{check.status:<7}] {check.check}: {check.detail}"))
            if check.fix:
                self.stdout.write(f"          fix: {check.fix}")
        verdict = report.verdict
        if verdict["wouldAssign"]:
            agent = verdict["agent"]
            self.stdout.write(
                self.style.SUCCESS(
                    f"Verdict: the next handover would go to {agent['name']} <{agent['email']}> "
                    f"({verdict['strategy']}, tier {verdict['tier']})."
                )
            )
        else:
            self.stdout.write(
                self.style.ERROR(
                    f"Verdict: the next handover would stay unassigned ({verdict['reason']})."
                )
            )
            for fix in verdict["fixes"]:
                self.stdout.write(f"  - {fix}")
        if report.problems:
            self.stdout.write(f"{len(report.problems)} problem(s) found.")

    @staticmethod
    def _one(model, tenant, value, label):
        try:
            found = model.objects.for_tenant(tenant).filter(pk=value).first()
        except ValidationError:
            found = None
        if found is None:
            raise CommandError(f"No {label} {value!r} in tenant {tenant.name}.")
        return found
