"""The tuning report: one self-contained HTML page (inline SVG and CSS, no scripts, no downloads).

It shows every measured point on a latency-vs-throughput plot (log-log; the Pareto front joined
and ringed, the chosen configuration highlighted, Server tries that missed the SLO hollow), the
explanation, the table of trials, each variant's load time, memory and size, and the variants
that were not candidates with the reason.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from polystack.store import ModelRecord, PlanRecord

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
W, H, ML, MR, MT, MB = 760, 440, 70, 20, 20, 50


@dataclass(frozen=True)
class _Pt:
    x: float
    y: float
    label: str
    variant: str
    ok: bool
    chosen: bool
    tip: str


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both throughput (higher) and latency (lower)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 <= y) and (x2 > x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def _bytes(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{v:.0f} B"


def _points(trials: Sequence[Mapping[str, Any]]) -> list[_Pt]:
    out = []
    for t in trials:
        for p in t.get("points") or []:
            x, y = float(p.get("throughput") or 0), float(p.get("latency_ms") or 0)
            if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y):
                tip = f"{t.get('label')}: {t.get('settings')}, {x:,.0f}/s, {y:.3g} ms (rung {t.get('rung')})"
                out.append(
                    _Pt(
                        x,
                        y,
                        str(t.get("label")),
                        str(t.get("variant_id")),
                        bool(p.get("ok", True)),
                        bool(t.get("chosen")),
                        tip,
                    )
                )
    return out


def _axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b += 1
    ticks = []
    for e in range(a, b + 1):
        ticks += [m * 10**e for m in (1, 2, 5) if lo / 1.5 <= m * 10**e <= hi * 1.5]
    return 10.0**a, 10.0**b, ticks


def svg_plot(trials: Sequence[Mapping[str, Any]], x_label: str, y_label: str) -> str:
    pts = _points(trials)
    if not pts:
        return '<p class="muted">no points to plot</p>'
    x0, x1, xt = _axis(min(p.x for p in pts), max(p.x for p in pts))
    y0, y1, yt = _axis(min(p.y for p in pts), max(p.y for p in pts))

    def sx(x: float) -> float:
        return ML + (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) * (W - ML - MR)

    def sy(y: float) -> float:
        return H - MB - (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) * (H - MT - MB)

    colors: dict[str, str] = {}
    for p in pts:
        colors.setdefault(p.variant, PALETTE[len(colors) % len(PALETTE)])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 24 * ((len(colors) + 2) // 3)}" '
        f'font-family="sans-serif" font-size="11">'
    ]
    parts.append(f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" fill="#fafafa" stroke="#ccc"/>')
    for x in xt:
        parts.append(f'<line x1="{sx(x):.1f}" y1="{MT}" x2="{sx(x):.1f}" y2="{H - MB}" stroke="#eee"/>')
        parts.append(f'<text x="{sx(x):.1f}" y="{H - MB + 14}" text-anchor="middle">{_fmt(float(x))}</text>')
    for y in yt:
        parts.append(f'<line x1="{ML}" y1="{sy(y):.1f}" x2="{W - MR}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{ML - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_fmt(float(y))}</text>')
    parts.append(f'<text x="{(ML + W - MR) / 2}" y="{H - 12}" text-anchor="middle">{_esc(x_label)} (log)</text>')
    parts.append(
        f'<text transform="translate(16 {(MT + H - MB) / 2}) rotate(-90)" text-anchor="middle">'
        f"{_esc(y_label)} (log)</text>"
    )
    ok = [p for p in pts if p.ok]
    front = sorted((ok[i] for i in pareto([(p.x, p.y) for p in ok])), key=lambda p: p.x)
    if len(front) > 1:
        path = " ".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#444" stroke-dasharray="4 3"/>')
    for p in pts:
        c = colors[p.variant]
        fill = c if p.ok else "none"
        parts.append(
            f'<circle cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="4" fill="{fill}" stroke="{c}" '
            f'fill-opacity="0.75"><title>{_esc(p.tip)}</title></circle>'
        )
    for p in front:
        parts.append(
            f'<circle cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="7" fill="none" stroke="#444">'
            f"<title>Pareto front: {_esc(p.tip)}</title></circle>"
        )
    chosen = [p for p in pts if p.chosen and p.ok]
    if chosen:
        p = max(chosen, key=lambda q: q.x)
        x, y = sx(p.x), sy(p.y)
        star = " ".join(
            f"{x + (10 if k % 2 == 0 else 4) * math.sin(k * math.pi / 5):.1f},"
            f"{y - (10 if k % 2 == 0 else 4) * math.cos(k * math.pi / 5):.1f}"
            for k in range(10)
        )
        parts.append(
            f'<polygon points="{star}" fill="gold" stroke="#000"><title>chosen: {_esc(p.tip)}</title></polygon>'
        )
        parts.append(f'<text x="{x + 12:.1f}" y="{y - 8:.1f}" font-weight="bold">chosen</text>')
    # legend
    ly = H + 4
    items = list(colors.items())
    labels = {p.variant: p.label for p in pts}
    for i, (variant, c) in enumerate(items):
        lx = ML + (i % 3) * 230
        yy = ly + 24 * (i // 3)
        parts.append(f'<circle cx="{lx}" cy="{yy}" r="5" fill="{c}"/>')
        parts.append(f'<text x="{lx + 10}" y="{yy + 4}">{_esc(labels[variant])}</text>')
    k = len(items)
    lx, yy = ML + (k % 3) * 230, ly + 24 * (k // 3)
    parts.append(
        f'<circle cx="{lx}" cy="{yy}" r="7" fill="none" stroke="#444"/>'
        f'<text x="{lx + 12}" y="{yy + 4}">Pareto front (dashed); hollow: missed the SLO</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], highlight: Sequence[bool] = ()) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = ' class="chosen"' if i < len(highlight) and highlight[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


AXES = {
    "realtime": ("throughput, one stream (samples/s)", "p99 latency (ms)"),
    "edge": ("throughput, one stream (samples/s)", "p99 latency (ms)"),
    "batch": ("throughput (samples/s)", "p99 compute time of one batch (ms)"),
    "server": ("offered load (QPS, Poisson)", "p99 latency (ms)"),
}
METRIC_COLUMNS = {
    "realtime": ("p50_ms", "p90_ms", "p99_ms", "early_stop_p90_ms", "throughput"),
    "edge": ("footprint_bytes", "p50_ms", "p99_ms", "throughput"),
    "batch": ("throughput", "batch_p99_ms", "mean_batch_size"),
    "server": ("qps", "p50_ms", "p99_ms", "mean_batch_size", "qps_tries"),
}


def render(data: Mapping[str, Any]) -> str:
    """HTML for a tuning result or a stored plan, given as ``TuneResult.to_dict()``-shaped data."""
    profile = str(data.get("profile"))
    rows = list(data.get("measurements") or [])
    trials = [r for r in rows if r.get("kind") == "trial"]
    variants = [r for r in rows if r.get("kind") == "variant"]
    rejected = [r for r in rows if r.get("kind") == "rejected"]
    settings = data.get("settings") or {}
    x_label, y_label = AXES.get(profile, ("throughput (samples/s)", "latency (ms)"))
    cols = METRIC_COLUMNS.get(profile, ())
    trial_rows = [
        [t.get("label"), t.get("settings"), t.get("rung"), t.get("duration_ms")]
        + [t.get(c) for c in cols]
        + [t.get("reason") or t.get("error") or ("ok" if t.get("feasible") else "-")]
        for t in trials
    ]
    variant_rows = [
        [
            v.get("label"),
            v.get("variant_id"),
            v.get("load_time_s"),
            _bytes(v.get("memory_bytes")),
            _bytes(v.get("size_bytes")),
            v.get("memory_method") or v.get("error"),
        ]
        for v in variants
    ]
    rejected_rows = [[r.get("label"), r.get("variant_id"), r.get("status"), r.get("reason")] for r in rejected]
    slo = data.get("slo_ms")
    when = data.get("created_at")
    stamp = datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M") if isinstance(when, (int, float)) else ""
    machine = data.get("machine") or {}
    extra = settings.get("extra") or {}
    notes = list(data.get("notes") or extra.get("notes") or [])
    title = f"polystack tune {data.get('model')} --profile {profile}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ddd; padding: 3px 7px; text-align: left; }}
th {{ background: #f3f3f3; }} tr.chosen td {{ background: #fff6cc; font-weight: bold; }}
.explain {{ background: #eef6ee; border-left: 4px solid #2ca02c; padding: 0.6em 1em; }}
.muted {{ color: #777; }}
</style></head><body>
<h1>{_esc(title)}</h1>
<p class="muted">{_esc(stamp)} &middot; machine {_esc(data.get("fingerprint"))}: {_esc(machine.get("cpu", ""))},
{_esc(machine.get("cores", "?"))} cores &middot; {_esc(data.get("strategy") or extra.get("strategy") or "")}
{f"&middot; SLO p99 &le; {_esc(slo)} ms" if slo else ""}</p>
<p class="explain">{_esc(data.get("explanation") or "")}</p>
{"".join(f'<p class="muted">note: {_esc(n)}</p>' for n in notes)}
<h2>Every measured point</h2>
{svg_plot(trials, x_label, y_label)}
<h2>Trials</h2>
{_table(["variant", "settings", "rung", "run ms", *cols, "verdict"], trial_rows, [bool(t.get("chosen")) for t in trials])}
<h2>Variants measured</h2>
{_table(["variant", "id", "load s", "memory", "artifact", "memory measured by"], variant_rows)}
<h2>Variants not considered</h2>
{_table(["variant", "id", "status", "reason"], rejected_rows) if rejected_rows else '<p class="muted">none</p>'}
<p class="muted">Measured with the MLPerf LoadGen (mlcommons-loadgen) in-process; short runs, so LoadGen's own
VALID/INVALID verdict under MLPerf submission rules is recorded per trial but not required.</p>
</body></html>
"""


def plan_data(record: ModelRecord, plan: PlanRecord, status: str) -> dict[str, Any]:
    """A stored plan in the shape ``render`` takes."""
    return {
        "model": f"{record.name}:{record.version}",
        "profile": plan.profile,
        "slo_ms": plan.settings.get("slo_ms"),
        "fingerprint": f"{plan.fingerprint} ({status})",
        "explanation": plan.explanation,
        "settings": plan.settings,
        "measurements": plan.measurements,
        "machine": plan.machine,
        "created_at": plan.created_at,
    }
