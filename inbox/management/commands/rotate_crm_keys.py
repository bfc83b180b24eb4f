"""Re-encrypt every stored CRM API key with the primary key of CRM_ENCRYPTION_KEYS.

Key rotation: put the new key first in CRM_ENCRYPTION_KEYS (keep the old one after it),
run this command, then remove the old key.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.crypto import SecretDecryptionError, rotate_secret
from inbox.models import CrmIntegration


class Command(BaseCommand):
    help = "Re-encrypt every CRM API key with the first key in CRM_ENCRYPTION_KEYS."

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check that every key can be re-encrypted, but save nothing.",
        )
        parser.add_argument(
            "--batch-size", type=int, default=200, help="Integrations per transaction."
        )

    def handle(self, *args, dry_run=False, batch_size=200, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        rotated, unreadable = 0, []
        last_pk = None
        while True:
            with transaction.atomic():
                # Deliberately cross-tenant: a maintenance job over every tenant's key.
                batch_query = (
                    CrmIntegration.all_tenants.exclude(api_key_encrypted="")
                    .select_for_update()
                    .order_by("pk")
                )
                if last_pk is not None:
                    batch_query = batch_query.filter(pk__gt=last_pk)
                batch = list(batch_query.only("pk", "name", "api_key_encrypted")[:batch_size])
                if not batch:
                    break
                last_pk = batch[-1].pk
                changed = []
                for integration in batch:
                    try:
                        integration.api_key_encrypted = rotate_secret(integration.api_key_encrypted)
                    except SecretDecryptionError:
                        unreadable.append(integration)
                        continue
                    changed.append(integration)
                if changed and not dry_run:
                    CrmIntegration.all_tenants.bulk_update(changed, ["api_key_encrypted"])
                rotated += len(changed)
            if len(batch) < batch_size:
                break

        verb = "Would re-encrypt" if dry_run else "Re-encrypted"
        self.stdout.write(f"{verb} {rotated} CRM API key(s) with the primary key.")
        if unreadable:
            for integration in unreadable:
                self.stderr.write(
                    f"Cannot decrypt the API key of CRM integration {integration.pk} "
                    f'("{integration.name}") with any key in CRM_ENCRYPTION_KEYS.'
                )
            others = "would be re-encrypted" if dry_run else "were re-encrypted"
            raise CommandError(
                f"{len(unreadable)} CRM API key(s) could not be decrypted and must be set "
                f"again; the others {others}."
            )
