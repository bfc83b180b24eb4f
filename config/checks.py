"""Deploy checks: `manage.py check --deploy` fails on development secrets."""

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def production_secrets(app_configs, **kwargs):
    errors = []
    if settings.SECRET_KEY == settings.DEV_SECRET_KEY:
        errors.append(
            Error(
                "SECRET_KEY is the development default.",
                hint="Set SECRET_KEY to a long random value, e.g. "
                "\"python -c 'import secrets; print(secrets.token_urlsafe(50))'\".",
                id="handover.E001",
            )
        )
    if not settings.CRM_ENCRYPTION_KEYS:
        errors.append(
            Error(
                "CRM_ENCRYPTION_KEYS is not set: CRM API keys would be encrypted with a key "
                "derived from SECRET_KEY.",
                hint='Set it to a Fernet key: python -c "from cryptography.fernet import '
                'Fernet; print(Fernet.generate_key().decode())".',
                id="handover.E002",
            )
        )
    return errors


@register()
def outbox_timing(app_configs, **kwargs):
    """A send must end before its lease does, or a second worker could send it again."""
    deadline = float(settings.OUTBOX_SEND_DEADLINE_SECONDS)
    lease = float(settings.OUTBOX_LEASE_SECONDS)
    if deadline + 5 > lease:
        return [
            Error(
                f"OUTBOX_SEND_DEADLINE_SECONDS ({deadline:g}) must be at least 5 s shorter "
                f"than OUTBOX_LEASE_SECONDS ({lease:g}).",
                hint="A send that outlives its lease may be claimed and sent a second time.",
                id="handover.E010",
            )
        ]
    return []


@register()
def login_throttling(app_configs, **kwargs):
    """A limit of 0 would lock every login; a cool-off of 0 would never lock one."""
    errors = []
    for name in ("AXES_FAILURE_LIMIT", "AXES_COOLOFF_MINUTES"):
        if getattr(settings, name) < 1:
            variable = {"AXES_FAILURE_LIMIT": "LOGIN_FAILURE_LIMIT"}.get(
                name, "LOGIN_COOLOFF_MINUTES"
            )
            errors.append(
                Error(
                    f"{variable} must be at least 1 (it is {getattr(settings, name)}).",
                    hint="Set LOGIN_THROTTLING_ENABLED=false to turn login throttling off.",
                    id="handover.E020",
                )
            )
    return errors
