"""Services for a tenant's CRM integration."""

from core.crypto import encrypt_secret
from inbox.models import CrmIntegration


def set_crm_api_key(*, integration: CrmIntegration, plaintext: str) -> None:
    """Encrypt `plaintext` (surrounding whitespace dropped) and store it as the CRM API key.

    Only the ciphertext is saved, and only `api_key_encrypted` (and `updated_at`) are
    written, so a concurrent change to the integration's other fields is not overwritten.
    """
    plaintext = (plaintext or "").strip()
    if not plaintext:
        raise ValueError("The CRM API key is empty.")
    integration.api_key_encrypted = encrypt_secret(plaintext)
    if integration._state.adding:
        integration.save()
    else:
        integration.save(update_fields=["api_key_encrypted", "updated_at"])


def save_crm_integration(*, integration: CrmIntegration, fields: list[str], api_key, actor):
    """Create or change an integration through the configuration door (permission check,
    one activity row); a new API key is encrypted first and recorded only as changed."""
    from teams.services import save_tenant_record

    fields = list(fields)
    if (api_key or "").strip():
        integration.api_key_encrypted = encrypt_secret(api_key.strip())
        fields.append("api_key_encrypted")
    return save_tenant_record(instance=integration, fields=fields, actor=actor)
