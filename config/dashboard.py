"""The SLA dashboard of the Django admin: what is at risk now, and how the SLAs went.

Scoped like the rest of the admin (core.admin_scope): a superuser sees every tenant and
may pick one; a staff user who administers some tenants sees only those; anyone else is
refused. The numbers come from the apps' selectors; this module picks the tenants,
reads the filters, and renders each chart as HTML (with a server-drawn SVG) or as CSV.
The list of leads at risk is also served alone, as an HTML fragment, which
dashboard.js fetches again every 15 seconds.
"""

import csv
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode

from config.charts import BarRow, Series, horizontal_bars, stacked_day_bars
from core.admin_scope import admin_tenant_ids
from inbox.selectors import agent_load, unassigned_sessions_by_reason
from leads.selectors import breaches_per_day, leads_at_risk, response_times
from outbox.selectors import failed_messages_by_channel, latest_failed_messages
from teams.models import Tenant

DEFAULT_DAYS = 30
MAX_DAYS = 366
DEFAULT_WITHIN_MINUTES = 10
AT_RISK_LIMIT = 100
LATEST_FAILED = 10
REFRESH_SECONDS = 15


# --- Who sees what --------------------------------------------------------------------


def visible_tenants(request) -> list[Tenant]:
    """The tenants the user may see on the dashboard; refused when none."""
    tenant_ids = admin_tenant_ids(request)
    if tenant_ids is None:
        return list(Tenant.objects.order_by("name"))
    if not tenant_ids:
        raise PermissionDenied
    return list(Tenant.objects.filter(pk__in=tenant_ids).order_by("name"))


def may_open_dashboard(request) -> bool:
    tenant_ids = admin_tenant_ids(request)
    return tenant_ids is None or bool(tenant_ids)


# --- Filters --------------------------------------------------------------------------


class DashboardFilters(forms.Form):
    """`tenant`, `from`, `to` (dates, both included) and `within` (minutes ahead that
    count as at risk). The date range applies to the historical charts."""

    tenant = forms.ChoiceField(required=False, label="Tenant")
    within = forms.IntegerField(min_value=1, max_value=24 * 60, label="At risk within (minutes)")

    def __init__(self, data, *, tenants: list[Tenant]):
        super().__init__(data)
        # "from" is a Python keyword, so these two are added by name.
        self.fields["from"] = forms.DateField(label="From")
        self.fields["to"] = forms.DateField(label="To")
        self.fields["from"].widget.input_type = "date"
        self.fields["to"].widget.input_type = "date"
        self.fields["tenant"].choices = [("", "All tenants")] + [
            (str(t.pk), t.name) for t in tenants
        ]
        if len(tenants) < 2:
            # Nothing to choose; a tenant named in the URL is still checked.
            self.fields["tenant"].widget = forms.HiddenInput()
        self.order_fields(["tenant", "from", "to", "within"])

    def clean(self):
        data = super().clean()
        start, end = data.get("from"), data.get("to")
        if start is None or end is None:
            return data
        if start > end:
            self.add_error("from", "The start date is after the end date.")
        elif (end - start).days + 1 > MAX_DAYS:
            self.add_error("from", f"Choose at most {MAX_DAYS} days.")
        return data


@dataclass(frozen=True)
class Scope:
    tenant_ids: list
    several_tenants: bool  # show which tenant each row is of
    start_day: date
    end_day: date  # included
    within: timedelta
    now: datetime
    query: str  # the filters, for links to the exports and the fragment
    zone: str = "UTC"  # the time zone its days are counted in (`_zone`)

    @property
    def within_minutes(self) -> int:
        return int(self.within.total_seconds() // 60)

    @property
    def start(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.start_day, time.min))

    @property
    def end(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.end_day + timedelta(days=1), time.min))

    @property
    def days(self) -> list[date]:
        return [
            self.start_day + timedelta(days=i)
            for i in range((self.end_day - self.start_day).days + 1)
        ]


def _zone(request, tenants: list[Tenant]):
    """The time zone the dashboard counts its days in (and shows times in): that of the
    tenants it shows when they share one (one tenant picked, or all in one zone), so a
    tenant's day is its own; UTC when they do not."""
    chosen = request.GET.get("tenant")
    shown = [t for t in tenants if str(t.pk) == chosen] if chosen else tenants
    zones = {t.timezone for t in shown or tenants}
    return ZoneInfo(zones.pop()) if len(zones) == 1 else UTC


def _scope(request, tenants: list[Tenant]) -> tuple[DashboardFilters, Scope | None]:
    """The filters form and, when they are valid, what the charts read (call it in the
    time zone of `_zone`)."""
    now = timezone.now()
    today = timezone.localdate(now)
    form = DashboardFilters(_with_defaults(request.GET, today), tenants=tenants)
    if not form.is_valid():
        return form, None
    data = form.cleaned_data
    chosen = data.get("tenant")
    tenant_ids = [t.pk for t in tenants if not chosen or str(t.pk) == chosen]
    query = {
        key: form.data[key] for key in ("tenant", "from", "to", "within") if form.data.get(key)
    }
    return form, Scope(
        tenant_ids=tenant_ids,
        several_tenants=len(tenant_ids) > 1,
        start_day=data["from"],
        end_day=data["to"],
        within=timedelta(minutes=data["within"]),
        now=now,
        query=urlencode(query),
        zone=timezone.get_current_timezone_name(),
    )


def _with_defaults(params, today: date):
    """The request's filters, with the defaults filled in, so that the form shows the
    range the charts use."""
    data = params.copy()
    if not data.get("to"):
        data["to"] = today.isoformat()
    if not data.get("from"):
        try:
            end = forms.DateField().clean(data["to"])
        except forms.ValidationError:
            end = today  # the form says what is wrong with "to"
        data["from"] = (end - timedelta(days=DEFAULT_DAYS - 1)).isoformat()
    if not data.get("within"):
        data["within"] = str(DEFAULT_WITHIN_MINUTES)
    return data


# --- Wording --------------------------------------------------------------------------


def time_left_phrase(seconds: float) -> str:
    """ "4 min left", "3 min late", "1 h 5 min late", "under 1 min left".

    A deadline that is exactly now has passed, as the sweep counts it."""
    late = seconds <= 0
    minutes = int(abs(seconds) // 60)
    if minutes == 0:
        amount = "under 1 min"
    elif minutes < 60:
        amount = f"{minutes} min"
    else:
        hours, minutes = divmod(minutes, 60)
        amount = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{amount} {'late' if late else 'left'}"


def duration_phrase(value: timedelta | None) -> str:
    if value is None:
        return "—"
    seconds = round(value.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _seconds(value: timedelta | None):
    return "" if value is None else round(value.total_seconds(), 1)


# --- The charts -----------------------------------------------------------------------
# Each chart is built once and then shown as HTML or written as CSV, so an export holds
# exactly the rows the page shows.


@dataclass
class Chart:
    name: str
    title: str
    data: object
    header: list[str]
    rows: list[list]
    svg: str = ""


def at_risk_chart(scope: Scope) -> Chart:
    leads, total = leads_at_risk(
        tenant_ids=scope.tenant_ids, now=scope.now, within=scope.within, limit=AT_RISK_LIMIT
    )
    items = []
    for lead in leads:
        seconds = (lead.deadline - scope.now).total_seconds()
        agent = lead.assigned_agent
        items.append(
            {
                "lead": lead,
                "url": reverse("admin:leads_lead_change", args=[lead.pk]),
                "stage": lead.stage,
                "agent": (agent.display_name or agent.user.email) if agent else "nobody",
                "seconds_left": int(seconds),
                "phrase": time_left_phrase(seconds),
                "late": seconds <= 0,
            }
        )
    return Chart(
        name="at_risk",
        title="Leads at risk now",
        data={"leads": items, "total": total, "shown": len(items)},
        header=[
            "lead_id",
            "lead",
            "tenant",
            "stage",
            "agent",
            "deadline",
            "seconds_left",
            "time_left",
        ],
        rows=[
            [
                item["lead"].pk,
                item["lead"].name,
                item["lead"].tenant.name,
                item["stage"],
                item["agent"],
                item["lead"].deadline.isoformat(),
                item["seconds_left"],
                item["phrase"],
            ]
            for item in items
        ],
    )


def breaches_chart(scope: Scope) -> Chart:
    counts = {
        (row["day"], row["stage"]): row["count"]
        for row in breaches_per_day(tenant_ids=scope.tenant_ids, start=scope.start, end=scope.end)
    }
    days = scope.days
    claim = [counts.get((day, "claim"), 0) for day in days]
    contact = [counts.get((day, "contact"), 0) for day in days]
    return Chart(
        name="breaches",
        title="SLA breaches per day",
        data={"claim_total": sum(claim), "contact_total": sum(contact)},
        header=["day", "claim", "contact", "total"],
        rows=[
            [day.isoformat(), a, b, a + b] for day, a, b in zip(days, claim, contact, strict=True)
        ],
        svg=stacked_day_bars(
            days,
            [Series("claim", "claim", claim), Series("contact", "contact", contact)],
            unit="breaches",
        ),
    )


def _times_chart(scope: Scope, by: str) -> Chart:
    rows = response_times(tenant_ids=scope.tenant_ids, start=scope.start, end=scope.end, by=by)
    for row in rows:
        for metric in ("claim", "contact"):
            for stat in ("median", "p90"):
                row[f"{metric}_{stat}_text"] = duration_phrase(row[f"{metric}_{stat}"])
    bars = [
        BarRow(
            label=row["label"],
            bars=[
                (
                    _seconds(row["claim_median"]) or 0,
                    "claim",
                    f"{row['label']}: median time to claim {row['claim_median_text']}",
                ),
                (
                    _seconds(row["contact_median"]) or 0,
                    "contact",
                    f"{row['label']}: median time to contact {row['contact_median_text']}",
                ),
            ],
            note=f"{row['claim_median_text']} / {row['contact_median_text']}",
        )
        for row in rows
    ]
    noun = "team" if by == "team" else "agent"
    return Chart(
        name=f"times_by_{by}",
        title=f"Time to claim and to contact, per {noun}",
        data={"rows": rows, "noun": noun},
        header=[
            "tenant",
            noun,
            "claims",
            "claim_median_seconds",
            "claim_p90_seconds",
            "contacts",
            "contact_median_seconds",
            "contact_p90_seconds",
        ],
        rows=[
            [
                row["tenant"],
                row["label"],
                row["claim_count"],
                _seconds(row["claim_median"]),
                _seconds(row["claim_p90"]),
                row["contact_count"],
                _seconds(row["contact_median"]),
                _seconds(row["contact_p90"]),
            ]
            for row in rows
        ],
        svg=horizontal_bars(bars),
    )


def times_by_team_chart(scope: Scope) -> Chart:
    return _times_chart(scope, "team")


def times_by_agent_chart(scope: Scope) -> Chart:
    return _times_chart(scope, "agent")


def load_chart(scope: Scope) -> Chart:
    agents = agent_load(tenant_ids=scope.tenant_ids)
    bars = []
    for agent in agents:
        capacity = agent.capacity
        of = f" of {capacity}" if capacity is not None else " (no limit)"
        bars.append(
            BarRow(
                label=agent.display_name or agent.user.email,
                bars=[
                    (
                        agent.current_lead_count,
                        "leads",
                        f"{agent.current_lead_count} open leads{of}",
                    ),
                    (agent.open_sessions, "sessions", f"{agent.open_sessions} open sessions{of}"),
                ],
                marker=capacity,
                marker_title=f"capacity {capacity}",
                note=f"{agent.current_lead_count} · {agent.open_sessions} / "
                f"{capacity if capacity is not None else '∞'}",
            )
        )
    return Chart(
        name="load",
        title="Agents' load now",
        data={"agents": agents},
        header=[
            "tenant",
            "agent",
            "email",
            "role",
            "presence",
            "open_leads",
            "open_sessions",
            "capacity",
        ],
        rows=[
            [
                a.tenant.name,
                a.display_name,
                a.user.email,
                a.role,
                a.get_presence_display(),
                a.current_lead_count,
                a.open_sessions,
                "" if a.capacity is None else a.capacity,
            ]
            for a in agents
        ],
        svg=horizontal_bars(bars),
    )


def unassigned_chart(scope: Scope) -> Chart:
    rows = unassigned_sessions_by_reason(tenant_ids=scope.tenant_ids)
    return Chart(
        name="unassigned",
        title="Unassigned sessions now, by reason",
        data={"rows": rows, "total": sum(r["count"] for r in rows)},
        header=["reason", "description", "sessions"],
        rows=[[r["reason"] or "none", r["label"], r["count"]] for r in rows],
        svg=horizontal_bars(
            [
                BarRow(
                    label=r["reason"] or "not routed yet",
                    bars=[(r["count"], "unassigned", f"{r['label']}: {r['count']}")],
                    note=str(r["count"]),
                )
                for r in rows
            ]
        ),
    )


def _outbox_list_url(scope: Scope, **filters) -> str:
    query = {"status__exact": "failed", **filters}
    if not scope.several_tenants and scope.tenant_ids:
        query["tenant__id__exact"] = str(scope.tenant_ids[0])
    return f"{reverse('admin:outbox_outboundmessage_changelist')}?{urlencode(query)}"


def failed_by_channel_chart(scope: Scope) -> Chart:
    rows = failed_messages_by_channel(tenant_ids=scope.tenant_ids, start=scope.start, end=scope.end)
    for row in rows:
        row["url"] = _outbox_list_url(scope, channel__exact=row["channel"])
    return Chart(
        name="failed_by_channel",
        title="Failed outbound messages, by channel",
        data={"rows": rows, "total": sum(r["count"] for r in rows), "url": _outbox_list_url(scope)},
        header=["channel", "failed"],
        rows=[[r["channel"], r["count"]] for r in rows],
        svg=horizontal_bars(
            [
                BarRow(
                    label=r["channel"],
                    bars=[(r["count"], "failed", f"{r['channel']}: {r['count']} failed")],
                    note=str(r["count"]),
                )
                for r in rows
            ]
        ),
    )


def failed_latest_chart(scope: Scope) -> Chart:
    messages = latest_failed_messages(
        tenant_ids=scope.tenant_ids, start=scope.start, end=scope.end, limit=LATEST_FAILED
    )
    items = [
        {
            "message": m,
            "url": reverse("admin:outbox_outboundmessage_change", args=[m.pk]),
        }
        for m in messages
    ]
    return Chart(
        name="failed_latest",
        title="Latest failed outbound messages",
        data={"messages": items},
        header=[
            "message_id",
            "created_at",
            "tenant",
            "channel",
            "kind",
            "target",
            "attempts",
            "last_error",
        ],
        rows=[
            [
                m.pk,
                m.created_at.isoformat(),
                m.tenant.name,
                m.channel,
                m.kind,
                m.target,
                m.attempts,
                m.last_error,
            ]
            for m in messages
        ],
    )


CHARTS = {
    "at_risk": at_risk_chart,
    "breaches": breaches_chart,
    "times_by_team": times_by_team_chart,
    "times_by_agent": times_by_agent_chart,
    "load": load_chart,
    "unassigned": unassigned_chart,
    "failed_by_channel": failed_by_channel_chart,
    "failed_latest": failed_latest_chart,
}


# --- Views ----------------------------------------------------------------------------


def _context(request, form, scope, **extra) -> dict:
    return {
        **admin.site.each_context(request),
        "title": "SLA dashboard",
        "form": form,
        "scope": scope,
        "refresh_seconds": REFRESH_SECONDS,
        **extra,
    }


def dashboard(request):
    tenants = visible_tenants(request)
    with timezone.override(_zone(request, tenants)):
        form, scope = _scope(request, tenants)
        if scope is None:
            return TemplateResponse(
                request, "admin/dashboard.html", _context(request, form, None), status=400
            ).render()
        charts = {name: build(scope) for name, build in CHARTS.items()}
        # Rendered here: the page's dates are in the dashboard's time zone too.
        return TemplateResponse(
            request,
            "admin/dashboard.html",
            _context(
                request,
                form,
                scope,
                charts=charts,
                at_risk=charts["at_risk"],
                times_charts=[charts["times_by_team"], charts["times_by_agent"]],
                fragment_url=f"{reverse('admin-dashboard-at-risk')}?{scope.query}",
            ),
        ).render()


def at_risk_fragment(request):
    tenants = visible_tenants(request)
    with timezone.override(_zone(request, tenants)):
        form, scope = _scope(request, tenants)
        if scope is None:
            return HttpResponseBadRequest(_errors_text(form), content_type="text/plain")
        return TemplateResponse(
            request,
            "admin/dashboard_at_risk.html",
            {"at_risk": at_risk_chart(scope), "scope": scope},
        ).render()


def export(request, chart: str):
    build = CHARTS.get(chart)
    if build is None:
        raise Http404("No such chart.")
    tenants = visible_tenants(request)
    with timezone.override(_zone(request, tenants)):
        form, scope = _scope(request, tenants)
        if scope is None:
            return HttpResponseBadRequest(_errors_text(form), content_type="text/plain")
        built = build(scope)
        rows = [[_csv_cell(value) for value in row] for row in built.rows]
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    filename = f"{chart}-{scope.start_day.isoformat()}-{scope.end_day.isoformat()}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(built.header)
    writer.writerows(rows)
    return response


def _csv_cell(value):
    # Lead names and errors come from outside: a cell a spreadsheet would run as a
    # formula is written as text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _errors_text(form) -> str:
    return "\n".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())


urlpatterns = [
    path("", admin.site.admin_view(dashboard), name="admin-dashboard"),
    path("at-risk/", admin.site.admin_view(at_risk_fragment), name="admin-dashboard-at-risk"),
    path(
        "export/<slug:chart>.csv",
        admin.site.admin_view(export),
        name="admin-dashboard-export",
    ),
]
