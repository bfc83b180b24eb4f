from django.core.management.base import BaseCommand

from teams.management.commands._tenant_arg import resolve_tenant
from teams.selectors import api_keys_for_tenant


class Command(BaseCommand):
    help = "List a tenant's API keys (prefix, name, state, last use). Secrets are never shown."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument("--all", action="store_true", help="Include revoked keys.")

    def handle(self, *args, tenant, all: bool, **options):
        tenant_obj = resolve_tenant(tenant)
        keys = api_keys_for_tenant(tenant=tenant_obj, include_revoked=all)
        if not keys:
            self.stdout.write(f"{tenant_obj.name} has no {'' if all else 'active '}API keys.")
            return
        self.stdout.write(f"{'PREFIX':<13} {'STATE':<8} {'CREATED':<17} {'LAST USED':<17} NAME")
        for key in keys:
            self.stdout.write(
                f"{key.prefix:<13} {'active' if key.is_active else 'revoked':<8} "
                f"{key.created_at:%Y-%m-%d %H:%M}  "
                f"{(f'{key.last_used_at:%Y-%m-%d %H:%M}' if key.last_used_at else 'never'):<17} "
                f"{key.name}"
            )
