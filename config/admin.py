"""django-axes' login-attempt lists with the columns an admin unlocking someone reads
(who, from where, when, locked out?), short enough for a laptop screen. The browser's
user agent and the raw form data stay on each row's own page."""

from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin

from core.admin_columns import date_column, text_column

WHO = text_column("username", "Username", 22)
FROM = text_column("ip_address", "Address", 22)
PATH = text_column("path_info", "Page", 16)


@admin.display(description="Fails", ordering="failures_since_start")
def failures(attempt):
    return attempt.failures_since_start


class CompactAccessAttemptAdmin(AccessAttemptAdmin):
    list_display = [
        WHO,
        FROM,
        PATH,
        failures,
        date_column("attempt_time", "When"),
        *(["status"] if "status" in AccessAttemptAdmin.list_display else []),
    ]


class CompactAccessLogAdmin(AccessLogAdmin):
    list_display = [
        WHO,
        FROM,
        date_column("attempt_time", "Logged in"),
        date_column("logout_time", "Logged out"),
    ]


class CompactAccessFailureLogAdmin(AccessFailureLogAdmin):
    list_display = [WHO, FROM, PATH, date_column("attempt_time", "When"), "locked_out"]


for model, model_admin in (
    (AccessAttempt, CompactAccessAttemptAdmin),
    (AccessLog, CompactAccessLogAdmin),
    (AccessFailureLog, CompactAccessFailureLogAdmin),
):
    if admin.site.is_registered(model):  # AXES_ENABLE_ADMIN may switch axes' lists off
        admin.site.unregister(model)
        admin.site.register(model, model_admin)
