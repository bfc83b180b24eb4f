from django.core.management.base import BaseCommand, CommandError

from core.actor import Actor
from teams.models import ApiKey
from teams.services import revoke_api_key


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (e.g. wk_Ab12Cd34). Requests with it get 401."

    def add_arguments(self, parser):
        parser.add_argument("prefix", help="The key's visible prefix, as `list_api_keys` shows.")

    def handle(self, *args, prefix: str, **options):
        # Operators identify a key by its globally unique prefix; no tenant is known yet.
        api_key = ApiKey.all_tenants.select_related("tenant").filter(prefix=prefix).first()
        if api_key is None:
            raise CommandError(f"No API key with prefix {prefix!r}.")
        was_active = api_key.is_active
        revoke_api_key(api_key=api_key, actor=Actor.for_command("revoke_api_key"))
        if was_active:
            self.stdout.write(self.style.SUCCESS(f"Revoked {prefix} of {api_key.tenant.name}."))
        else:
            self.stdout.write(f"{prefix} was already revoked.")
