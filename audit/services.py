from django.contrib.contenttypes.models import ContentType

from audit.models import ActivityLog
from core.actor import Actor
from core.row_sql import new_row


def build_activity(
    *, tenant, action: str, actor: Actor, target=None, data: dict | None = None
) -> ActivityLog:
    """An unsaved ActivityLog row, for `record_activities` to write several at once."""
    return new_row(
        ActivityLog,
        tenant=tenant,
        action=action,
        actor=actor.membership,
        actor_user=actor.person_user,
        actor_label=actor.label,
        via=actor.via,
        target_type=ContentType.objects.get_for_model(target) if target is not None else None,
        target_id=str(target.pk) if target is not None else "",
        target_label=str(target)[:255] if target is not None else "",
        data=data or {},
    )


def record_activity(*, tenant, action: str, actor: Actor, target=None, data: dict | None = None):
    """Append one ActivityLog row. Call inside the transaction that made the change."""
    activity = build_activity(tenant=tenant, action=action, actor=actor, target=target, data=data)
    activity.save(force_insert=True)
    return activity


def record_activities(activities: list[ActivityLog]) -> None:
    """Append several rows in one statement."""
    if activities:
        ActivityLog.all_tenants.bulk_create(activities)


# Fields whose values never enter the audit log, not even encrypted: only that they changed.
SECRET_FIELD_WORDS = ("secret", "encrypted", "password", "hash", "token")
HIDDEN = "(hidden)"


def is_secret_field(field_name: str) -> bool:
    return any(word in field_name for word in SECRET_FIELD_WORDS)


def readable_value(instance, field_name: str):
    """A field's value as a person reads it: related rows by name, choices by label."""
    field = instance._meta.get_field(field_name)
    if is_secret_field(field_name):
        return HIDDEN if getattr(instance, field.attname) else None
    if field.is_relation:
        related = getattr(instance, field_name, None)
        return str(related) if related is not None else None
    if field.choices:
        return str(getattr(instance, f"get_{field_name}_display")())
    value = getattr(instance, field.attname)
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return str(value)


def field_changes(before, after, fields) -> dict:
    """{field: [old, new]} for the fields whose readable value differs; `before` is None
    for a new row (every non-empty field is listed as set)."""
    changes = {}
    for name in fields:
        new = readable_value(after, name)
        old = readable_value(before, name) if before is not None else None
        if is_secret_field(name):
            if getattr(after, name) != (getattr(before, name) if before is not None else None):
                changes[name] = [old, "(new value)"]
        elif old != new and not (before is None and new in ("", None, [], {})):
            changes[name] = [old, new]
    return changes
