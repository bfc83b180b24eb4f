"""Small building blocks for the admin's list columns, shared by every app's admin so
the lists read the same way: short cells (the full text in a tooltip), one warning
mark for something that went wrong, nothing for something that is fine."""

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from core.admin_scope import admin_tenant_ids


def short(text, limit: int = 28):
    """`text` cut to `limit` characters with an ellipsis; the whole of it in `title`."""
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: limit - 1].rstrip())


def warning(text: str, label: str):
    """A red warning sign and a few words; `label` says it in full (tooltip, screen
    readers). Columns show this for a problem and nothing when all is well."""
    return format_html(
        '<span class="hv-warning" title="{}">'
        '<span class="hv-warning-icon" role="img" aria-label="{}">⚠</span> {}</span>',
        label,
        label,
        text,
    )


def short_date(value):
    """A date and time in a list cell: "04 Mar 09:15"; year and seconds in `title`."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    return format_html(
        '<span class="hv-nowrap" title="{}">{}</span>',
        f"{local:%Y-%m-%d %H:%M:%S %Z}",
        f"{local:%d %b %H:%M}",
    )


class TenantColumnMixin:
    """Lists name the tenant of each row only for someone who sees several tenants: a
    tenant's own admin knows whose rows they are, and the column costs width."""

    tenant_columns = ("tenant", "tenant_display")

    def get_list_display(self, request):
        columns = super().get_list_display(request)
        tenant_ids = admin_tenant_ids(request)
        if tenant_ids is not None and len(tenant_ids) <= 1:
            columns = [c for c in columns if c not in self.tenant_columns]
        return columns

    @admin.display(description="Tenant", ordering="tenant__name")
    def tenant_display(self, obj):
        return short(obj.tenant, 16)


def text_column(path: str, description: str, limit: int = 24, *, empty: str = "-"):
    """A list column showing `path` ("user__full_name") cut to `limit` characters, the
    whole value in a tooltip; sorted by that field."""

    def column(obj):
        value = obj
        for part in path.split("__"):
            value = getattr(value, part, None) if value is not None else None
        return empty if value in (None, "") else short(value, limit)

    column.__name__ = f"{path}_column"
    column.short_description = description
    column.admin_order_field = path
    return column


def date_column(path: str, description: str):
    """A list column showing a date and time briefly ("04 Mar 09:15")."""

    def column(obj):
        return short_date(getattr(obj, path))

    column.__name__ = f"{path}_column"
    column.short_description = description
    column.admin_order_field = path
    return column


tenant_column = text_column("tenant__name", "Tenant", 16)
