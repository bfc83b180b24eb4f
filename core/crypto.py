"""Encryption at rest for tenants' secrets: CRM API keys and webhook signing secrets.

The keys are encrypted with `cryptography.fernet.MultiFernet` (AES-128-CBC + HMAC-SHA256,
authenticated, with a timestamp), using the Fernet keys in ``settings.CRM_ENCRYPTION_KEYS``:

* the **first** key encrypts every new value;
* **every** key decrypts, so a key can be rotated without downtime: put the new key
  first, run ``manage.py rotate_crm_keys`` (re-encrypts every stored value with the
  first key), then remove the old key.

Production must set ``CRM_ENCRYPTION_KEYS``. When it is empty, a single development key
is derived from ``SECRET_KEY`` (urlsafe base64 of its SHA-256), so a fresh checkout works
with no setup; but then changing ``SECRET_KEY`` makes every stored CRM key unreadable.

Nothing here logs, and no error message contains, a plaintext or a key.
"""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SecretDecryptionError(Exception):
    """A stored value cannot be decrypted with any key in CRM_ENCRYPTION_KEYS."""


def _development_key() -> bytes:
    """The fallback key when CRM_ENCRYPTION_KEYS is empty: for development only."""
    return base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest())


def _configured_keys() -> list[str | bytes]:
    keys = [key.strip() for key in settings.CRM_ENCRYPTION_KEYS or [] if key and key.strip()]
    return keys or [_development_key()]


def _fernet() -> MultiFernet:
    # Built on each call: cheap, and a changed setting (tests, a reloaded worker) applies
    # at once instead of being stuck in a cache.
    fernets = []
    for position, key in enumerate(_configured_keys()):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            # Never echo the key itself.
            raise ImproperlyConfigured(
                f"CRM_ENCRYPTION_KEYS[{position}] is not a valid Fernet key (32 url-safe "
                'base64-encoded bytes). Generate one with: python -c "from '
                'cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
            ) from None
    return MultiFernet(fernets)


def _as_token_bytes(token: str | bytes) -> bytes:
    if isinstance(token, bytes):
        return token
    if not isinstance(token, str) or not token:
        raise SecretDecryptionError("There is no encrypted value to decrypt.")
    try:
        return token.encode("ascii")
    except UnicodeEncodeError:
        raise SecretDecryptionError("The encrypted value is malformed.") from None


def encrypt_secret(plaintext: str) -> str:
    """The Fernet token (ASCII text) of `plaintext`, encrypted with the primary key."""
    if not isinstance(plaintext, str):
        raise TypeError("encrypt_secret() takes a str.")
    return _fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt_secret(token: str) -> str:
    """The plaintext of a token made by `encrypt_secret` with any configured key."""
    try:
        return _fernet().decrypt(_as_token_bytes(token)).decode("utf-8")
    except InvalidToken:
        raise SecretDecryptionError(
            "The encrypted value cannot be decrypted with any key in CRM_ENCRYPTION_KEYS "
            "(was it encrypted with a key that has since been removed?)."
        ) from None


def rotate_secret(token: str) -> str:
    """`token` re-encrypted with the primary key (decrypted with whichever key fits)."""
    try:
        return _fernet().rotate(_as_token_bytes(token)).decode("ascii")
    except InvalidToken:
        raise SecretDecryptionError(
            "The encrypted value cannot be decrypted with any key in CRM_ENCRYPTION_KEYS, "
            "so it cannot be re-encrypted."
        ) from None
