"""Charts as inline SVG, for the built-in dashboard and the DSMB packet.

Plain functions from numbers to an SVG string: no script, no font or stylesheet to
fetch, so a page works without internet and a packet renders the same everywhere.
Output is deterministic (coordinates rounded, series in the order given), so the
HTML of a packet is byte-stable for the same data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

#: Grade colours (0 none .. 5 death), colour-blind safe (Okabe-Ito based).
GRADE_COLOURS = ("#d9d9d9", "#56b4e9", "#f0e442", "#e69f00", "#d55e00", "#000000")
SERIES_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442")
_FONT = 'font-family="sans-serif"'


def _n(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _text(x: float, y: float, label: str, *, size: int = 11, anchor: str = "start",
          extra: str = "") -> str:  # fmt: skip
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" font-size="{size}" text-anchor="{anchor}" '
        f"{_FONT}{extra}>{escape(label)}</text>"
    )


def _svg(width: float, height: float, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_n(width)} {_n(height)}" '
        f'width="{_n(width)}" height="{_n(height)}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def bar_chart(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    y_label: str = "",
    colours: Sequence[str] | None = None,
    width: int = 640,
    height: int = 260,
) -> str:
    """Stacked bars: one bar per category, one stack segment per series."""
    palette = list(colours or SERIES_COLOURS)
    left, right, top, bottom = 48, 150, 24, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(categories))]
    y_max = _nice_max(max(totals, default=0))
    body = [_text(left, 14, title, size=13, extra=' font-weight="bold"')]
    for k in range(5):
        value = y_max * k / 4
        y = top + plot_h - plot_h * k / 4
        body.append(f'<line x1="{left}" y1="{_n(y)}" x2="{left + plot_w}" y2="{_n(y)}" '
                    'stroke="#eeeeee"/>')  # fmt: skip
        body.append(_text(left - 4, y + 4, _n(value), size=10, anchor="end"))
    slot = plot_w / max(len(categories), 1)
    bar_w = slot * 0.6
    for i, category in enumerate(categories):
        x = left + slot * i + (slot - bar_w) / 2
        base = top + plot_h
        for j, (_, values) in enumerate(series.items()):
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / y_max
            base -= h
            body.append(
                f'<rect x="{_n(x)}" y="{_n(base)}" width="{_n(bar_w)}" height="{_n(h)}" '
                f'fill="{palette[j % len(palette)]}"><title>{escape(category)}: '
                f"{_n(value)}</title></rect>"
            )
        body.append(_text(x + bar_w / 2, top + plot_h + 14, category, size=10, anchor="middle"))
    if y_label:
        body.append(_text(12, top + plot_h / 2, y_label, size=10, anchor="middle",
                          extra=f' transform="rotate(-90 12 {_n(top + plot_h / 2)})"'))  # fmt: skip
    for j, name in enumerate(series):
        y = top + 12 + 16 * j
        body.append(f'<rect x="{width - right + 12}" y="{_n(y - 9)}" width="10" height="10" '
                    f'fill="{palette[j % len(palette)]}"/>')  # fmt: skip
        body.append(_text(width - right + 26, y, name, size=10))
    return _svg(width, height, title, body)


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "",
    log_y: bool = False,
    width: int = 640,
    height: int = 280,
) -> str:
    """Lines with markers; ``log_y`` plots log10 of positive values (others dropped)."""
    left, right, top, bottom = 56, 150, 24, 44
    plot_w, plot_h = width - left - right, height - top - bottom

    def y_of(value: float) -> float | None:
        if log_y:
            return math.log10(value) if value > 0 else None
        return value

    points = {
        name: [(x, y) for x, v in values if (y := y_of(v)) is not None]
        for name, values in series.items()
    }
    xs = [x for values in points.values() for x, _ in values] or [0.0, 1.0]
    ys = [y for values in points.values() for _, y in values] or [0.0, 1.0]
    x_min, x_max = min(xs), max(xs)
    y_min = min(0.0, min(ys)) if not log_y else math.floor(min(ys))
    y_max = _nice_max(max(ys)) if not log_y else math.ceil(max(ys)) or 1.0
    if x_max == x_min:
        x_max = x_min + 1
    if y_max == y_min:
        y_max = y_min + 1

    def px(x: float) -> float:
        return left + plot_w * (x - x_min) / (x_max - x_min)

    def py(y: float) -> float:
        return top + plot_h - plot_h * (y - y_min) / (y_max - y_min)

    body = [_text(left, 14, title, size=13, extra=' font-weight="bold"')]
    for k in range(5):
        value = y_min + (y_max - y_min) * k / 4
        label = _n(10**value) if log_y else _n(value)
        body.append(f'<line x1="{left}" y1="{_n(py(value))}" x2="{left + plot_w}" '
                    f'y2="{_n(py(value))}" stroke="#eeeeee"/>')  # fmt: skip
        body.append(_text(left - 4, py(value) + 4, label, size=10, anchor="end"))
    for k in range(5):
        value = x_min + (x_max - x_min) * k / 4
        body.append(_text(px(value), top + plot_h + 14, _n(value), size=10, anchor="middle"))
    if x_label:
        body.append(_text(left + plot_w / 2, height - 6, x_label, size=10, anchor="middle"))
    if y_label:
        body.append(_text(12, top + plot_h / 2, y_label, size=10, anchor="middle",
                          extra=f' transform="rotate(-90 12 {_n(top + plot_h / 2)})"'))  # fmt: skip
    for j, (name, values) in enumerate(points.items()):
        colour = SERIES_COLOURS[j % len(SERIES_COLOURS)]
        if len(values) > 1:
            path = " ".join(f"{_n(px(x))},{_n(py(y))}" for x, y in values)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                        'stroke-width="1.5"/>')  # fmt: skip
        for x, y in values:
            body.append(f'<circle cx="{_n(px(x))}" cy="{_n(py(y))}" r="2.5" fill="{colour}"/>')
        y = top + 12 + 16 * j
        body.append(f'<rect x="{width - right + 12}" y="{_n(y - 9)}" width="10" height="10" '
                    f'fill="{colour}"/>')  # fmt: skip
        body.append(_text(width - right + 26, y, name, size=10))
    return _svg(width, height, title, body)


@dataclass(frozen=True)
class SwimmerLane:
    """One participant on the swimmer plot (days since infusion)."""

    label: str
    group: str
    end_day: float
    episodes: Sequence[tuple[str, float, float | None, int]] = ()  # (kind, start, end, grade)
    markers: Sequence[tuple[str, float]] = field(default=())  # (kind, day)


_MARKER = {
    "dlt": ("#d55e00", "D"),
    "sae": ("#cc79a7", "S"),
    "death": ("#000000", "†"),
    "withdrawal": ("#7f7f7f", "W"),
}


def swimmer(lanes: Sequence[SwimmerLane], *, title: str, width: int = 900) -> str:
    """A lane per participant from infusion (day 0) to the last day known, with CRS and
    ICANS episodes coloured by grade and markers for DLT, SAE, death and withdrawal."""
    left, right, top, lane_h = 130, 20, 40, 22
    height = top + lane_h * max(len(lanes), 1) + 50
    plot_w = width - left - right
    x_max = _nice_max(max((lane.end_day for lane in lanes), default=28.0))

    def px(day: float) -> float:
        return left + plot_w * max(day, 0.0) / x_max

    body = [_text(8, 16, title, size=13, extra=' font-weight="bold"')]
    for k in range(5):
        day = x_max * k / 4
        body.append(f'<line x1="{_n(px(day))}" y1="{top - 6}" x2="{_n(px(day))}" '
                    f'y2="{height - 44}" stroke="#eeeeee"/>')  # fmt: skip
        body.append(_text(px(day), height - 30, f"day {_n(day)}", size=10, anchor="middle"))
    for i, lane in enumerate(lanes):
        y = top + lane_h * i
        body.append(_text(8, y + 12, f"{lane.group} {lane.label}", size=10))
        body.append(f'<rect x="{_n(px(0))}" y="{_n(y + 4)}" width="{_n(px(lane.end_day) - px(0))}" '
                    f'height="10" fill="#f2f2f2" stroke="#bdbdbd"/>')  # fmt: skip
        for kind, start, end, grade in lane.episodes:
            stop = lane.end_day if end is None else end
            offset = 0 if kind == "CRS" else 5
            body.append(
                f'<rect x="{_n(px(start))}" y="{_n(y + 4 + offset)}" '
                f'width="{_n(max(px(stop) - px(start), 1.5))}" height="5" '
                f'fill="{GRADE_COLOURS[min(grade, 5)]}"><title>{escape(kind)} grade {grade}, '
                f"day {_n(start)}–{'ongoing' if end is None else _n(end)}</title></rect>"
            )
        for kind, day in lane.markers:
            colour, glyph = _MARKER.get(kind, ("#333333", "?"))
            body.append(_text(px(day), y + 13, glyph, size=11, anchor="middle",
                              extra=f' fill="{colour}" font-weight="bold"'))  # fmt: skip
    legend_y = height - 12
    items = [(f"grade {g}", GRADE_COLOURS[g]) for g in range(1, 6)]
    x = left
    for label, colour in items:
        body.append(f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        body.append(_text(x + 14, legend_y, label, size=10))
        x += 70
    body.append(_text(x, legend_y, "upper half CRS, lower half ICANS; D DLT, S SAE, † death, "
                      "W withdrawal", size=10))  # fmt: skip
    return _svg(width, height, title, body)
