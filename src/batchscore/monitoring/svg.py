"""Small inline SVG charts for the run report: horizontal bars with threshold lines, grouped
bars, and a line of points over runs.

Plain strings, no plotting library: the report is one self-contained HTML file that opens
offline, and three chart shapes do not justify a dependency. Every text that reaches the SVG
goes through :func:`esc`, so a feature name or category value is never markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# Colours by check status, shared with the report's tables.
STATUS_COLOURS = {
    "pass": "#15803d",
    "warn": "#d97706",
    "block": "#dc2626",
    "skipped": "#9ca3af",
    "info": "#0e7490",
}
AXIS = "#6b7280"
GRID = "#e5e7eb"
TEXT = "#1f2937"
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif\""


def esc(text: object) -> str:
    """``text`` as SVG/HTML text or attribute content: nothing in it is markup."""
    return escape(str(text), quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high] (1, 2, 2.5 or 5 × 10^k apart).

    A range too narrow for floats to step through (two runs' means that differ in the 16th
    digit) is widened as a flat one is: the ticks are counted, never stepped until they pass
    ``high``, so no input can make this loop."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    scale = max(abs(low), abs(high))
    if high - low <= max(scale * 1e-9, 1e-200):  # flat, to within what floats tell apart
        pad = (scale if scale > 1e-200 else 1.0) * 0.05
        low, high = low - pad, high + pad
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step)
    last = math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def fmt_number(value: float | None, *, percent: bool = False) -> str:
    """A figure for a label: ``–`` for none, a percentage, thousands separators or 3
    significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if percent:
        return f"{value * 100:.0f}%" if abs(value) >= 0.1 or value == 0 else f"{value * 100:.1f}%"
    if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
        return f"{int(value):,}"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) < 0.001:
        return f"{value:.2g}"
    return f"{value:.3g}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {FONT} font-size="12" fill="{TEXT}">'
        f"<title>{esc(title)}</title>{''.join(body)}</svg>"
    )


def hbar_chart(
    rows: Sequence[tuple[str, float | None, str]],
    thresholds: Sequence[tuple[float, str]],
    *,
    title: str,
    x_label: str,
    width: int = 960,
) -> str:
    """Horizontal bars, one per row (label, value, status colour key), with dashed vertical
    threshold lines (value, label).

    Args:
        rows: ``(label, value, status)``; a None value draws no bar and says "no value".
        thresholds: Where to draw a threshold line and what to call it.
        title: The chart's accessible title.
        x_label: What the x axis measures.
        width: Pixels.

    Returns:
        An ``<svg>`` element.
    """
    left, right, top, bar, gap = 190, 70, 34, 18, 8
    plot = width - left - right
    height = top + len(rows) * (bar + gap) + 44
    values = [v for _, v, _ in rows if v is not None] + [t for t, _ in thresholds]
    ticks = nice_ticks(0.0, max(values, default=1.0) * 1.05 or 1.0)
    high = ticks[-1]

    def x(value: float) -> float:
        return left + plot * max(0.0, min(value, high)) / high

    body: list[str] = []
    bottom = top + len(rows) * (bar + gap)
    for tick in ticks:  # grid and tick labels
        body.append(
            f'<line x1="{x(tick):.1f}" y1="{top - 4}" x2="{x(tick):.1f}" y2="{bottom}" '
            f'stroke="{GRID}"/>'
            f'<text x="{x(tick):.1f}" y="{bottom + 16}" text-anchor="middle" fill="{AXIS}">'
            f"{esc(fmt_number(tick))}</text>"
        )
    for index, (label, value, status) in enumerate(rows):
        y = top + index * (bar + gap)
        body.append(
            f'<text x="{left - 8}" y="{y + bar - 5}" text-anchor="end">'
            f"<title>{esc(label)}</title>{esc(_short(label, 26))}</text>"
        )
        if value is None:
            body.append(
                f'<text x="{left + 4}" y="{y + bar - 5}" fill="{AXIS}" font-style="italic">'
                "no value</text>"
            )
            continue
        colour = STATUS_COLOURS.get(status, STATUS_COLOURS["pass"])
        end = x(value)
        body.append(
            f'<rect x="{left}" y="{y}" width="{max(end - left, 1.5):.1f}" height="{bar}" '
            f'rx="2" fill="{colour}" fill-opacity="0.85"><title>{esc(label)}: '
            f"{esc(fmt_number(value))}</title></rect>"
            f'<text x="{end + 5:.1f}" y="{y + bar - 5}">{esc(fmt_number(value))}</text>'
        )
    body.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{bottom}" stroke="{AXIS}"/>')
    for position, (value, label) in enumerate(sorted(thresholds)):
        tx = x(value)
        body.append(
            f'<line x1="{tx:.1f}" y1="{top - 10}" x2="{tx:.1f}" y2="{bottom}" '
            f'stroke="{STATUS_COLOURS["block"]}" stroke-width="1.5" stroke-dasharray="5 3"/>'
            f'<text x="{tx:.1f}" y="{top - 14 - 12 * (position % 2)}" text-anchor="middle" '
            f'fill="{STATUS_COLOURS["block"]}" font-size="11">{esc(label)}</text>'
        )
    body.append(
        f'<text x="{left + plot / 2:.1f}" y="{bottom + 34}" text-anchor="middle" '
        f'fill="{AXIS}">{esc(x_label)}</text>'
    )
    return _svg(width, height, body, title)


def grouped_bar_chart(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    *,
    title: str,
    x_label: str,
    y_label: str = "share of rows",
    width: int = 960,
    height: int = 280,
) -> str:
    """Vertical bars grouped by category, one bar per series, as shares (0–1).

    Args:
        categories: The x axis' groups (bins or category values).
        series: ``(name, share per category, colour)``; a None share draws no bar.
        title: The chart's accessible title.
        x_label: What the groups are.
        y_label: What the bars measure.
        width: Pixels.
        height: Pixels.

    Returns:
        An ``<svg>`` element with a legend.
    """
    slanted = len(categories) > 6 or max((len(c) for c in categories), default=0) > 9
    left, right, top = 58, 16, 30
    bottom_space = 84 if slanted else 50
    plot_w, plot_h = width - left - right, height - top - bottom_space
    shares = [v for _, values, _ in series for v in values if v is not None]
    ticks = nice_ticks(0.0, max(shares, default=0.0) * 1.08 or 0.1, 4)
    high = ticks[-1] or 1.0

    def y(value: float) -> float:
        return top + plot_h * (1 - value / high)

    body: list[str] = []
    for tick in ticks:
        body.append(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}" '
            f'stroke="{GRID}"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" fill="{AXIS}">'
            f"{esc(fmt_number(tick, percent=True))}</text>"
        )
    group = plot_w / max(len(categories), 1)
    bar = min(28.0, group * 0.8 / max(len(series), 1))
    for index, category in enumerate(categories):
        centre = left + group * (index + 0.5)
        first = centre - bar * len(series) / 2
        for number, (name, values, colour) in enumerate(series):
            value = values[index] if index < len(values) else None
            if value is None:
                continue
            top_y = y(value)
            body.append(
                f'<rect x="{first + number * bar:.1f}" y="{top_y:.1f}" width="{bar * 0.92:.1f}" '
                f'height="{max(y(0) - top_y, 0):.1f}" fill="{colour}">'
                f"<title>{esc(name)} · {esc(category)}: "
                f"{esc(fmt_number(value, percent=True))}</title></rect>"
            )
        label = esc(_short(category, 18))
        ty = top + plot_h + 15
        if slanted:
            body.append(
                f'<text transform="translate({centre:.1f},{ty}) rotate(-35)" text-anchor="end" '
                f'font-size="11"><title>{esc(category)}</title>{label}</text>'
            )
        else:
            body.append(
                f'<text x="{centre:.1f}" y="{ty}" text-anchor="middle" font-size="11">'
                f"<title>{esc(category)}</title>{label}</text>"
            )
    body.append(
        f'<line x1="{left}" y1="{y(0):.1f}" x2="{left + plot_w}" y2="{y(0):.1f}" '
        f'stroke="{AXIS}"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'fill="{AXIS}">{esc(x_label)}</text>'
        f'<text transform="translate(14,{top + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" fill="{AXIS}">{esc(y_label)}</text>'
    )
    lx = left + plot_w
    for name, _, colour in reversed(series):  # legend, right-aligned along the top
        width_guess = 7 * len(name) + 22
        lx -= width_guess
        body.append(
            f'<rect x="{lx:.1f}" y="8" width="11" height="11" rx="2" fill="{colour}"/>'
            f'<text x="{lx + 15:.1f}" y="18">{esc(name)}</text>'
        )
    return _svg(width, height, body, title)


def line_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    title: str,
    y_label: str,
    x_label: str = "run (logical date)",
    percent: bool = False,
    from_zero: bool = False,
    width: int = 330,
    height: int = 190,
    colour: str = "#2563eb",
) -> str:
    """One metric over runs: points joined where consecutive runs have a value, the last
    point (the reported run) ringed.

    Args:
        labels: One x label per run, oldest first.
        values: The metric per run (None: not known for that run).
        title: Shown above the plot, and the accessible title.
        y_label: What the y axis measures.
        x_label: What the x axis is.
        percent: Label the y axis as percentages.
        from_zero: Start the y axis at 0 (counts, rates: a drop shows at its true size).
        width: Pixels.
        height: Pixels.
        colour: The line's colour.

    Returns:
        An ``<svg>`` element.
    """
    left, right, top, bottom = 54, 14, 34, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    known = [v for v in values if v is not None]
    body: list[str] = [
        f'<text x="{left}" y="15" font-weight="600">{esc(title)}</text>',
    ]
    if not known:
        body.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f'fill="{AXIS}" font-style="italic">not recorded for these runs</text>'
        )
        return _svg(width, height, body, title)
    low, high = min(known), max(known)
    if high == low:  # a flat line: in the middle of a small range around it
        pad = (abs(low) or 1.0) * 0.05
        low, high = low - pad, high + pad
    if from_zero and min(known) >= 0:
        low = 0.0
    ticks = nice_ticks(low, high, 4)
    y0, y1 = ticks[0], ticks[-1]

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - y0) / ((y1 - y0) or 1.0))

    def x(index: int) -> float:
        return left + (plot_w * index / (len(values) - 1) if len(values) > 1 else plot_w / 2)

    for tick in ticks:
        body.append(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}" '
            f'stroke="{GRID}"/>'
            f'<text x="{left - 5}" y="{y(tick) + 4:.1f}" text-anchor="end" fill="{AXIS}" '
            f'font-size="11">{esc(fmt_number(tick, percent=percent))}</text>'
        )
    segment: list[str] = []
    for index, value in enumerate([*values, None]):
        if value is not None:
            segment.append(f"{x(index):.1f},{y(value):.1f}")
            continue
        if len(segment) > 1:
            body.append(
                f'<polyline points="{" ".join(segment)}" fill="none" stroke="{colour}" '
                'stroke-width="2"/>'
            )
        segment = []
    for index, value in enumerate(values):
        if value is None:
            continue
        last = index == len(values) - 1
        body.append(
            f'<circle cx="{x(index):.1f}" cy="{y(value):.1f}" r="{5 if last else 3}" '
            f'fill="{"#fff" if last else colour}" stroke="{colour}" stroke-width="2">'
            f"<title>{esc(labels[index])}: {esc(fmt_number(value, percent=percent))}</title>"
            "</circle>"
        )
    body.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="{AXIS}"/>'
    )
    last = len(labels) - 1
    shown = set(range(len(labels))) if len(labels) <= 4 else {0, last // 2, last}
    for index in sorted(shown):
        anchor = "start" if index == 0 and last else "end" if index == last and last else "middle"
        body.append(
            f'<text x="{x(index):.1f}" y="{top + plot_h + 15}" text-anchor="{anchor}" '
            f'fill="{AXIS}" font-size="11">{esc(labels[index])}</text>'
        )
    body.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'fill="{AXIS}" font-size="11">{esc(x_label)}</text>'
        f'<text transform="translate(12,{top + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" fill="{AXIS}" font-size="11">{esc(y_label)}</text>'
    )
    return _svg(width, height, body, title)
