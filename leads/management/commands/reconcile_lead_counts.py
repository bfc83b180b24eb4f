from django.core.management.base import BaseCommand

from leads.services import reconcile_lead_counts
from teams.management.commands._tenant_arg import resolve_tenant


class Command(BaseCommand):
    help = (
        "Compare each agent's current_lead_count with the open leads assigned to them "
        "(new, claimed, contacted) and report every difference; --fix writes the real "
        "counts. Exits 0 either way."
    )

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="Repair the counters that differ.")
        parser.add_argument("--tenant", help="Only this tenant (id or slug); default: all.")

    def handle(self, *args, fix: bool, tenant: str | None, **options):
        tenant_obj = resolve_tenant(tenant) if tenant else None
        drifts = reconcile_lead_counts(fix=fix, tenant=tenant_obj)
        scope = f"tenant {tenant_obj.slug}" if tenant_obj else "all tenants"
        for drift in drifts:
            agent = drift.agent
            self.stdout.write(
                f"{agent.user.email} (tenant {agent.tenant.slug}): "
                f"stored {drift.stored}, actual {drift.actual}" + (" -> repaired" if fix else "")
            )
        if not drifts:
            self.stdout.write(
                self.style.SUCCESS(f"No drift: every lead counter matches its leads ({scope}).")
            )
        elif fix:
            self.stdout.write(self.style.SUCCESS(f"Repaired {_counters(len(drifts))} ({scope})."))
        else:
            self.stdout.write(
                self.style.WARNING(
                    f"{_counters(len(drifts))} out of step ({scope}); "
                    "run again with --fix to repair."
                )
            )


def _counters(n: int) -> str:
    return f"{n} lead counter{'s' if n != 1 else ''}"
