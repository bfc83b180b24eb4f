import json

from django.core.management.base import BaseCommand

from core.actor import Actor
from teams.management.commands._tenant_arg import resolve_tenant
from teams.services import create_api_key


class Command(BaseCommand):
    help = "Create an API key for a tenant. The key is printed once and never stored."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant id or slug.")
        parser.add_argument(
            "--name", required=True, help="What the key is for, e.g. 'WhatsApp bot'."
        )
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="Print one JSON object."
        )

    def handle(self, *args, tenant, name, as_json: bool, **options):
        tenant_obj = resolve_tenant(tenant)
        api_key, plaintext = create_api_key(
            tenant=tenant_obj, name=name, actor=Actor.for_command("create_api_key")
        )
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "id": str(api_key.id),
                        "prefix": api_key.prefix,
                        "tenant_id": str(tenant_obj.id),
                        "api_key": plaintext,
                    }
                )
            )
            return
        self.stdout.write(f"API key for {tenant_obj.name} ({api_key.name}):")
        self.stdout.write(self.style.SUCCESS(plaintext))
        self.stdout.write("Store it now: it is shown only once.")
