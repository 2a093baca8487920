"""The activity chart as SVG geometry (no script, no library): completed and failed
attempts per minute as stacked bars, slot use as a line, drawn by the page's template."""

from __future__ import annotations

from datetime import datetime, timezone

WIDTH, HEIGHT = 720, 150
LEFT, RIGHT, TOP, BOTTOM = 34, 34, 8, 20


def geometry(series: dict) -> dict:
    """Rectangles, a polyline and axis labels for :func:`history.chart_series` data."""
    completed, failed, use = series["completed"], series["failed"], series["slot_use"]
    count = len(completed)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max([a + b for a, b in zip(completed, failed, strict=True)] + [1])
    step = plot_w / max(count, 1)
    bars = []
    for index, (ok, bad) in enumerate(zip(completed, failed, strict=True)):
        x = LEFT + index * step
        ok_h, bad_h = ok / peak * plot_h, bad / peak * plot_h
        if ok:
            bars.append({"x": round(x, 1), "y": round(TOP + plot_h - ok_h, 1),
                         "w": round(max(step - 0.5, 0.5), 1), "h": round(ok_h, 1),
                         "kind": "ok"})
        if bad:
            bars.append({"x": round(x, 1), "y": round(TOP + plot_h - ok_h - bad_h, 1),
                         "w": round(max(step - 0.5, 0.5), 1), "h": round(bad_h, 1),
                         "kind": "bad"})
    points = " ".join(
        f"{LEFT + (index + 0.5) * step:.1f},{TOP + plot_h - value * plot_h:.1f}"
        for index, value in enumerate(use) if value is not None)
    ticks = []
    spacing = next((n for n in (5, 10, 15, 30, 60) if count / n <= 7), 60)
    for index in range(0, count, spacing):
        minute = series["start_minute"] + index
        label = datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%H:%M")
        ticks.append({"x": round(LEFT + index * step, 1), "label": label})
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT,
            "top": TOP, "bottom": TOP + plot_h, "bars": bars, "points": points,
            "ticks": ticks, "peak": peak, "window": _window(count), "total_ok": sum(completed),
            "total_bad": sum(failed)}


def _window(minutes: int) -> str:
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"
