from django.core.management.base import BaseCommand

from inbox.services import reconcile_open_session_counts
from leads.services import reconcile_lead_counts
from teams.management.commands._tenant_arg import resolve_tenant


class Command(BaseCommand):
    help = (
        "Compare each agent's work counters with the work they hold: open_session_count "
        "with their open sessions, current_lead_count with their open leads (new, "
        "claimed, contacted). Reports every difference; --fix writes the real counts. "
        "Routing reads these counters, so a drifted one skews least busy and capacity. "
        "Exits 0 either way."
    )

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="Repair the counters that differ.")
        parser.add_argument("--tenant", help="Only this tenant (id or slug); default: all.")

    def handle(self, *args, fix: bool, tenant: str | None, **options):
        tenant_obj = resolve_tenant(tenant) if tenant else None
        scope = f"tenant {tenant_obj.slug}" if tenant_obj else "all tenants"
        found = 0
        for label, reconcile in (
            ("open sessions", reconcile_open_session_counts),
            ("open leads", reconcile_lead_counts),
        ):
            for drift in reconcile(fix=fix, tenant=tenant_obj):
                found += 1
                agent = drift.agent
                self.stdout.write(
                    f"{agent.user.email} (tenant {agent.tenant.slug}) {label}: "
                    f"stored {drift.stored}, actual {drift.actual}"
                    + (" -> repaired" if fix else "")
                )
        plural = "s" if found != 1 else ""
        if not found:
            self.stdout.write(
                self.style.SUCCESS(f"No drift: every counter matches the work held ({scope}).")
            )
        elif fix:
            self.stdout.write(self.style.SUCCESS(f"Repaired {found} counter{plural} ({scope})."))
        else:
            self.stdout.write(
                self.style.WARNING(
                    f"{found} counter{plural} out of step ({scope}); run again with --fix."
                )
            )
