"""Bar charts as inline SVG, drawn on the server.

No script and no chart library: the page works offline and under the CSP, and a chart
is readable as soon as the HTML arrives. Each bar carries a <title> (the browser shows
it as a tooltip) with its exact value; colours come from classes in dashboard.css.
"""

from dataclasses import dataclass, field
from datetime import date

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe


@dataclass(frozen=True)
class Series:
    name: str
    css_class: str
    values: list[float]


def stacked_day_bars(days: list[date], series: list[Series], *, unit: str) -> SafeString:
    """One stacked bar per day (the series on top of one another), with the highest total
    on the y axis and every few days labelled on the x axis."""
    width, height = 900, 220
    left, right, top, bottom = 36, 8, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    peak = max(totals, default=0) or 1
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.7, 1)
    parts = [
        format_html(
            '<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"></line>',
            left,
            top + plot_h,
            width - right,
            top + plot_h,
        ),
        format_html(
            '<text class="tick" x="{}" y="{}" text-anchor="end">{}</text>',
            left - 6,
            top + 10,
            _number(peak if any(totals) else 0),
        ),
        format_html(
            '<text class="tick" x="{}" y="{}" text-anchor="end">0</text>', left - 6, top + plot_h
        ),
    ]
    label_every = max(1, round(len(days) / 8))
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for s in series:
            value = s.values[i]
            if not value:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(
                format_html(
                    '<rect class="{}" x="{}" y="{}" width="{}" height="{}">'
                    "<title>{}: {} {} {}</title></rect>",
                    s.css_class,
                    _coord(x),
                    _coord(y),
                    _coord(bar_w),
                    _coord(h),
                    day.isoformat(),
                    _number(value),
                    s.name,
                    unit,
                )
            )
        if i % label_every == 0:
            parts.append(
                format_html(
                    '<text class="tick" x="{}" y="{}" text-anchor="middle">{}</text>',
                    _coord(left + i * slot + slot / 2),
                    height - 8,
                    day.strftime("%d %b"),
                )
            )
    return _svg(width, height, parts, label=f"{unit} per day")


@dataclass(frozen=True)
class BarRow:
    label: str
    # (value, css class, tooltip) per bar of the row, drawn one under the other.
    bars: list[tuple[float, str, str]]
    # An optional mark across the row, e.g. the agent's capacity.
    marker: float | None = None
    marker_title: str = ""
    note: str = ""  # text after the bars, e.g. "3 / 5"
    extra: dict = field(default_factory=dict)


def horizontal_bars(rows: list[BarRow], *, scale_max: float | None = None) -> SafeString:
    """One row per label, its bars side by side on a common scale."""
    if not rows:
        return mark_safe("")
    width, label_w, note_w = 640, 190, 110
    bar_h, gap = 10, 8
    plot_w = width - label_w - note_w
    highest = max(
        [v for row in rows for v, _, _ in row.bars] + [row.marker or 0 for row in rows],
        default=0,
    )
    peak = scale_max or highest or 1
    row_h = len(rows[0].bars) * bar_h + gap
    height = len(rows) * row_h + gap
    parts = []
    for r, row in enumerate(rows):
        y0 = gap + r * row_h
        parts.append(
            format_html(
                '<text class="label" x="{}" y="{}" text-anchor="end">{}</text>',
                label_w - 8,
                _coord(y0 + (row_h - gap) / 2 + 4),
                _truncate(row.label, 28),
            )
        )
        for b, (value, css_class, title) in enumerate(row.bars):
            parts.append(
                format_html(
                    '<rect class="{}" x="{}" y="{}" width="{}" height="{}">'
                    "<title>{}</title></rect>",
                    css_class,
                    label_w,
                    y0 + b * bar_h,
                    _coord(plot_w * min(value, peak) / peak),
                    bar_h - 1,
                    title,
                )
            )
        if row.marker is not None:
            x = label_w + plot_w * min(row.marker, peak) / peak
            parts.append(
                format_html(
                    '<line class="marker" x1="{}" y1="{}" x2="{}" y2="{}"><title>{}</title></line>',
                    _coord(x),
                    y0 - 2,
                    _coord(x),
                    y0 + row_h - gap + 2,
                    row.marker_title,
                )
            )
        if row.note:
            parts.append(
                format_html(
                    '<text class="note" x="{}" y="{}">{}</text>',
                    width - note_w + 8,
                    _coord(y0 + (row_h - gap) / 2 + 4),
                    row.note,
                )
            )
    return _svg(width, height, parts, label="bar chart")


def _svg(width: int, height: int, parts: list, *, label: str) -> SafeString:
    # A viewBox and width 100%: the chart shrinks with a narrow box and never overflows
    # it; the max-width keeps it from growing, and its text with it, in a wide one.
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" width="100%" style="max-width: {}px"'
        ' role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">{}</svg>',
        width,
        height,
        width,
        label,
        format_html_join("", "{}", ((p,) for p in parts)),
    )


def _coord(value: float) -> str:
    return f"{value:.1f}"


def _number(value: float) -> str:
    return f"{value:g}"


def _truncate(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"
