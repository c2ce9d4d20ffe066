"""Loss curves drawn as PNG with PIL (no plotting library needed): one panel, log-scaled y, a line per loss."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def plot_curves(steps: list[int], curves: dict[str, list[float]], path: str | Path, title: str = "",
                size: tuple[int, int] = (800, 480), skip: tuple[str, ...] = ("grad_norm",)) -> None:
    """Write the curves (name -> values at `steps`) to a PNG; non-positive values are left out of the log scale."""
    w, h = size
    left, right, top, bottom = 70, 170, 36, 44
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((left, 10), title, fill="black")
    series = {k: v for k, v in curves.items() if k not in skip}
    values = [y for ys in series.values() for y in ys if y > 0 and math.isfinite(y)]
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    if not steps or not values:
        img.save(path)
        return
    lo, hi = math.log10(min(values)), math.log10(max(values))
    hi = hi if hi > lo else lo + 1
    x0, x1 = min(steps), max(steps)
    x1 = x1 if x1 > x0 else x0 + 1

    def xy(step: int, y: float) -> tuple[float, float]:
        fx = (step - x0) / (x1 - x0)
        fy = (math.log10(y) - lo) / (hi - lo)
        return left + fx * (w - left - right), h - bottom - fy * (h - top - bottom)

    for i in range(5):  # y ticks
        v = lo + (hi - lo) * i / 4
        _, y = xy(x0, 10 ** v)
        d.line([left - 4, y, left, y], fill="black")
        d.text((4, y - 6), f"{10 ** v:.3g}", fill="black")
    for i in range(5):  # x ticks
        s = x0 + (x1 - x0) * i / 4
        x, _ = xy(s, 10 ** lo)
        d.line([x, h - bottom, x, h - bottom + 4], fill="black")
        d.text((x - 10, h - bottom + 8), f"{s:.0f}", fill="black")
    d.text(((w - right) // 2, h - 16), "step", fill="black")
    for i, (name, ys) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [xy(s, y) for s, y in zip(steps, ys) if y > 0 and math.isfinite(y)]
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        elif points:
            d.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        d.text((w - right + 10, top + 16 * i), name, fill=colour)
    img.save(path)
