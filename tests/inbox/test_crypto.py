"""The CRM API key is encrypted at rest, and the encryption keys can be rotated."""

import base64
import hashlib
import json
from io import StringIO
from urllib.parse import quote, quote_plus

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from core.crypto import SecretDecryptionError, decrypt_secret, encrypt_secret, rotate_secret
from inbox.integrations import set_crm_api_key
from inbox.models import CrmIntegration
from tests.inbox.factories import CRM_API_KEY, CrmIntegrationFactory

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def _stored_key(integration) -> str:
    return CrmIntegration.all_tenants.get(pk=integration.pk).api_key_encrypted


def _rotate(*args) -> str:
    out = StringIO()
    call_command("rotate_crm_keys", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_round_trip(settings):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    for plaintext in ["crm-key-123", "ключ with spaces and ünïcode ✓", "x" * 500]:
        assert decrypt_secret(encrypt_secret(plaintext)) == plaintext


def test_ciphertext_does_not_reveal_the_plaintext(settings):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    token = encrypt_secret(CRM_API_KEY)
    assert token != CRM_API_KEY
    assert CRM_API_KEY not in token
    assert CRM_API_KEY.encode().hex() not in token
    # A fresh IV each time: equal keys do not give equal ciphertexts.
    assert encrypt_secret(CRM_API_KEY) != token


def test_without_configured_keys_a_development_key_is_derived_from_secret_key(settings):
    settings.CRM_ENCRYPTION_KEYS = []
    token = encrypt_secret(CRM_API_KEY)
    derived = base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest())
    settings.CRM_ENCRYPTION_KEYS = [derived.decode()]
    assert decrypt_secret(token) == CRM_API_KEY
    settings.SECRET_KEY = "another-secret-key-" + "x" * 40
    settings.CRM_ENCRYPTION_KEYS = []
    with pytest.raises(SecretDecryptionError):
        decrypt_secret(token)


def test_a_wrong_key_raises_a_clear_error_without_secrets(settings):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    token = encrypt_secret(CRM_API_KEY)
    settings.CRM_ENCRYPTION_KEYS = [KEY_B]
    with pytest.raises(SecretDecryptionError) as error:
        decrypt_secret(token)
    message = str(error.value)
    assert "CRM_ENCRYPTION_KEYS" in message
    assert KEY_A not in message and KEY_B not in message and CRM_API_KEY not in message


@pytest.mark.parametrize("token", ["", "not-a-token", "gAAAAAB" + "A" * 80, "ünïcode"])
def test_a_malformed_token_raises_secret_decryption_error(settings, token):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    with pytest.raises(SecretDecryptionError):
        decrypt_secret(token)


def test_an_invalid_configured_key_is_a_configuration_error_that_hides_it(settings):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A, "not-a-fernet-key"]
    with pytest.raises(ImproperlyConfigured) as error:
        encrypt_secret("x")
    assert "CRM_ENCRYPTION_KEYS[1]" in str(error.value)
    assert "not-a-fernet-key" not in str(error.value)


def test_the_primary_key_encrypts_and_the_others_still_decrypt(settings):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    old_token = encrypt_secret(CRM_API_KEY)
    settings.CRM_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    assert decrypt_secret(old_token) == CRM_API_KEY
    new_token = rotate_secret(old_token)
    settings.CRM_ENCRYPTION_KEYS = [KEY_B]
    assert decrypt_secret(new_token) == CRM_API_KEY
    with pytest.raises(SecretDecryptionError):
        decrypt_secret(old_token)


def test_set_crm_api_key_stores_only_the_ciphertext(settings, tenant):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    integration = CrmIntegrationFactory(tenant=tenant, api_key="")
    set_crm_api_key(integration=integration, plaintext=f"  {CRM_API_KEY}\n")
    stored = _stored_key(integration)
    assert stored and CRM_API_KEY not in stored
    assert decrypt_secret(stored) == CRM_API_KEY  # surrounding whitespace dropped
    with pytest.raises(ValueError, match="empty"):
        set_crm_api_key(integration=integration, plaintext="   ")
    assert _stored_key(integration) == stored


def test_rotate_crm_keys_moves_every_tenant_to_the_primary_key(settings, tenant, other_tenant):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    ours = CrmIntegrationFactory(tenant=tenant, api_key="ours-key")
    theirs = CrmIntegrationFactory(tenant=other_tenant, api_key="their-key")
    spare = CrmIntegrationFactory(tenant=tenant, is_active=False, api_key="spare-key")
    keyless = CrmIntegrationFactory(tenant=other_tenant, is_active=False, api_key="")

    settings.CRM_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    output = _rotate("--batch-size", "2")

    assert "Re-encrypted 3 CRM API key(s)" in output
    settings.CRM_ENCRYPTION_KEYS = [KEY_B]
    assert decrypt_secret(_stored_key(ours)) == "ours-key"
    assert decrypt_secret(_stored_key(theirs)) == "their-key"
    assert decrypt_secret(_stored_key(spare)) == "spare-key"
    assert _stored_key(keyless) == ""
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    for integration in (ours, theirs, spare):
        with pytest.raises(SecretDecryptionError):
            decrypt_secret(_stored_key(integration))


def test_rotate_crm_keys_dry_run_changes_nothing(settings, tenant):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    integration = CrmIntegrationFactory(tenant=tenant)
    before = _stored_key(integration)

    settings.CRM_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    output = _rotate("--dry-run")

    assert "Would re-encrypt 1 CRM API key(s)" in output
    assert _stored_key(integration) == before
    settings.CRM_ENCRYPTION_KEYS = [KEY_B]
    with pytest.raises(SecretDecryptionError):
        decrypt_secret(_stored_key(integration))


def test_rotate_crm_keys_reports_keys_it_cannot_decrypt_and_rotates_the_rest(
    settings, tenant, other_tenant
):
    settings.CRM_ENCRYPTION_KEYS = [KEY_A]
    readable = CrmIntegrationFactory(tenant=tenant)
    settings.CRM_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    lost = CrmIntegrationFactory(tenant=other_tenant, name="Lost CRM")

    settings.CRM_ENCRYPTION_KEYS = [KEY_B, KEY_A]
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="1 CRM API key"):
        call_command("rotate_crm_keys", stdout=out, stderr=err)

    assert str(lost.pk) in err.getvalue() and "Lost CRM" in err.getvalue()
    assert CRM_API_KEY not in out.getvalue() + err.getvalue()
    settings.CRM_ENCRYPTION_KEYS = [KEY_B]
    assert decrypt_secret(_stored_key(readable)) == CRM_API_KEY


SECRET_WITH_SPECIALS = 'tok"en\\é/+ &x'


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: k,
        lambda k: quote(k, safe=""),  # percent-encoded in a query or path segment
        lambda k: quote(k),  # percent-encoded in a URL path
        lambda k: quote_plus(k),  # a form-encoded body
        lambda k: json.dumps(k)[1:-1],  # escaped in a JSON body
        lambda k: json.dumps(k, ensure_ascii=False)[1:-1],
    ],
)
def test_a_crm_key_echoed_in_any_encoding_is_redacted(encode):
    from inbox.whatsapp import redact

    echoed = f"the CRM said: {encode(SECRET_WITH_SPECIALS)} is wrong"
    assert redact(echoed, SECRET_WITH_SPECIALS) == "the CRM said: [redacted] is wrong"
