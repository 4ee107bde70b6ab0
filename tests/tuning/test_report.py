"""The HTML report: self-contained, every point plotted, the front and the choice marked."""

from __future__ import annotations

import xml.dom.minidom

from polystack.tuning.report import pareto, render


def trial(label: str, vid: str, x: float, y: float, chosen: bool = False, ok: bool = True) -> dict:
    return {
        "kind": "trial",
        "variant_id": vid,
        "label": label,
        "settings": "1 thread",
        "rung": 0,
        "duration_ms": 100,
        "p99_ms": y,
        "throughput": x,
        "feasible": ok,
        "chosen": chosen,
        "points": [{"throughput": x, "latency_ms": y, "ok": ok}],
    }


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [(100, 1.0), (200, 2.0), (150, 3.0), (50, 0.5), (200, 2.5)]
    assert sorted(pareto(pts)) == [0, 1, 3]


def test_report_is_self_contained_with_plot_front_choice_and_rejections() -> None:
    data = {
        "model": "mlp:1",
        "profile": "realtime",
        "fingerprint": "abc",
        "explanation": "onnxruntime fp32 chosen <x>",
        "measurements": [
            trial("onnxruntime fp32", "a", 1000, 0.5, chosen=True),
            trial("openvino bf16", "b", 800, 0.9),
            trial("torch fp32 eager", "c", 1200, 2.0),
            trial("torch fp32 eager", "c", 300, 9.0, ok=False),
            {"kind": "variant", "variant_id": "a", "label": "onnxruntime fp32", "memory_bytes": 4e7, "size_bytes": 1e6},
            {
                "kind": "rejected",
                "variant_id": "d",
                "label": "onnxruntime int8",
                "status": "rejected",
                "reason": "cosine 0.92",
            },
        ],
    }
    page = render(data)
    assert (
        page.startswith("<!doctype html>")
        and "<script" not in page
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    svg = page[page.index("<svg") : page.index("</svg>") + 6]
    xml.dom.minidom.parseString(svg)  # well-formed
    assert svg.count("<circle") >= 4 and "Pareto front" in svg and "chosen" in svg and "<polyline" in svg
    assert 'fill="none"' in svg  # the missed-SLO point is hollow
    assert "onnxruntime int8" in page and "cosine 0.92" in page
    assert "&lt;x&gt;" in page  # text is escaped
    assert "40.0 MB" in page


def test_report_without_points_still_renders() -> None:
    page = render({"model": "m:1", "profile": "server", "measurements": []})
    assert "no points to plot" in page
