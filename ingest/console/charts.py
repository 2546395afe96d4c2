"""The overview's pictures: stacked bar charts drawn as SVG on the server (the console's CSP
allows no script, and a picture needs none). Only numbers and fixed labels reach the markup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT, LEFT, BOTTOM = 390, 130, 34, 18  # three side by side in the console
# One colour per series, in the order they stack; the legend uses the same.
COLOURS = {
    "processed": "#1a7f37",
    "ignored": "#8c959f",
    "queued": "#2f5bd3",
    "dead": "#b42318",
    "opened": "#b42318",
    "depth": "#2f5bd3",
}


def buckets(end: datetime, span: timedelta, step: timedelta) -> list[datetime]:
    """The bucket starts that cover `span` up to `end`, oldest first, aligned to `step`."""
    seconds = int(step.total_seconds())
    last = datetime.fromtimestamp(int(end.timestamp()) // seconds * seconds, tz=end.tzinfo)
    count = int(span / step)
    return [last - step * (count - 1 - i) for i in range(count)]


def stacked_bars(
    title: str,
    starts: Sequence[datetime],
    series: Mapping[str, Mapping[datetime, int]],
    step: timedelta,
) -> Markup:
    """An SVG of one bar per bucket, each series stacked in order; the y axis is labelled with
    the highest total, the x axis with the first and last bucket's time (UTC)."""
    totals = [sum(values.get(start, 0) for values in series.values()) for start in starts]
    peak = max(totals, default=0) or 1
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM
    bar_w = plot_w / max(1, len(starts))
    rects = []
    for i, start in enumerate(starts):
        y = float(plot_h)
        for name, values in series.items():
            count = values.get(start, 0)
            if not count:
                continue
            height = count / peak * (plot_h - 4)
            y -= height
            when = start.strftime("%H:%M")
            rects.append(
                f'<rect x="{LEFT + i * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 0.6, 0.6):.1f}"'
                f' height="{height:.1f}" fill="{COLOURS.get(name, "#5b6475")}">'
                f"<title>{when} {escape(name)}: {count}</title></rect>"
            )
    # Bars of ten minutes or more span a day: their ends say which day too.
    fmt = "%b %d %H:%M" if step >= timedelta(minutes=10) else "%H:%M"
    first = starts[0].strftime(fmt) if starts else ""
    last = (starts[-1] + step).strftime(fmt) if starts else ""
    legend = " ".join(
        f'<tspan fill="{COLOURS.get(name, "#5b6475")}">■ {escape(name)}</tspan>' for name in series
    )
    svg = (
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT + 16}" width="{WIDTH}"'
        f' height="{HEIGHT + 16}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
        f'<line x1="{LEFT}" y1="{plot_h}" x2="{WIDTH}" y2="{plot_h}" stroke="#d9dde5"/>'
        f'<text x="{LEFT - 4}" y="10" text-anchor="end" font-size="10">{peak}</text>'
        f'<text x="{LEFT - 4}" y="{plot_h}" text-anchor="end" font-size="10">0</text>'
        f"{''.join(rects)}"
        f'<text x="{LEFT}" y="{HEIGHT}" font-size="10">{first}</text>'
        f'<text x="{WIDTH}" y="{HEIGHT}" text-anchor="end" font-size="10">{last} UTC</text>'
        f'<text x="{LEFT}" y="{HEIGHT + 14}" font-size="10">{legend}</text>'
        "</svg>"
    )
    return Markup(svg)  # noqa: S704 - built above from numbers and escaped labels only
