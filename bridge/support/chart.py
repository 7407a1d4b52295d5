"""The overview's chart: registrations, removals and comebacks per day, as SVG made on
the server (no script). Each series has a fill pattern of its own as well as a colour
(solid, diagonal hatching, dots) and the legend names each beside its pattern, so it
reads in greyscale and without colour vision; the numbers are also given as text
beside it (the page's table)."""

from __future__ import annotations

from xml.sax.saxutils import escape

#: (key in a day's figures, label, pattern id)
SERIES = (
    ("registered", "Registrations", "solid"),
    ("removed", "Removals", "hatch"),
    ("cameBack", "Comebacks", "dots"),
)
WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 44, 40

_DEFS = """<defs>
<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" \
patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>\
<line x1="0" y1="0" x2="0" y2="6" stroke="#a3361f" stroke-width="3"/></pattern>
<pattern id="dots" width="5" height="5" patternUnits="userSpaceOnUse">\
<rect width="5" height="5" fill="#fff"/><circle cx="2.5" cy="2.5" r="1.6" fill="#1d5b8c"/>\
</pattern>
</defs>"""
_FILL = {"solid": "#222", "hatch": "url(#hatch)", "dots": "url(#dots)"}


def _scale_top(peak: int) -> int:
    """A round top for the y axis at or above ``peak`` (at least 4)."""
    top = 4
    while top < peak:
        top = top * 5 // 2 if str(top)[0] == "2" else top * 2
    return top


def svg(days: list[dict], title: str) -> str:
    """The chart of ``days`` (dicts with ``day`` and the series' keys), oldest first."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _scale_top(max((d[key] for d in days for key, _, _ in SERIES), default=0))
    slot = plot_w / max(1, len(days))
    bar = max(1.0, (slot - 2) / len(SERIES))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="chart-title chart-desc" class="chart">',
        f'<title id="chart-title">{escape(title)}</title>',
        '<desc id="chart-desc">Bars per day: registrations solid, removals hatched, '
        "comebacks dotted. The same numbers are in the table below the chart.</desc>",
        _DEFS,
    ]
    for i, (_key, label, pattern) in enumerate(SERIES):  # the legend, above the plot
        x = LEFT + i * 170
        parts.append(
            f'<rect x="{x}" y="10" width="18" height="14" fill="{_FILL[pattern]}" '
            f'stroke="#222"/><text x="{x + 24}" y="22" class="legend">{label}</text>'
        )
    for step in range(5):  # the y axis: 0, a quarter, ... the top
        value = top * step // 4
        y = TOP + plot_h - plot_h * step / 4
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            f'stroke="#ccc"/><text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>'
        )
    for i, day in enumerate(days):
        x0 = LEFT + i * slot + 1
        for j, (key, label, pattern) in enumerate(SERIES):
            height = plot_h * day[key] / top
            if height:
                parts.append(
                    f'<rect x="{x0 + j * bar:.1f}" y="{TOP + plot_h - height:.1f}" '
                    f'width="{bar:.1f}" height="{height:.1f}" fill="{_FILL[pattern]}" '
                    f'stroke="#222" stroke-width="0.5"><title>{escape(day["day"])}: '
                    f"{day[key]} {label.lower()}</title></rect>"
                )
        if i % 5 == 0 or i == len(days) - 1:
            parts.append(
                f'<text x="{x0 + slot / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{escape(day["day"][5:])}</text>'
            )
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
        'stroke="#222"/></svg>'
    )
    return "\n".join(parts)
