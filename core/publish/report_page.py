"""`report.html`: one self-contained page a person can read to decide whether to trust the student.

Everything comes from the job's own `metrics.json` fields and heatmap files: the spec,
the student-vs-teacher table, the deployment table, training curves per stage, the
reliability diagrams, per-class accuracy and the heatmap gallery (mistakes first).
Charts are inline SVG and images are inline PNG data, styles are inline, and there is no
script: the page makes no request, so it opens the same from a job folder, a download or
the API (which serves it with a Content-Security-Policy that forbids scripts).
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from core.publish.manifest import REPORT
from core.publish.model_card import fed_line, starting_weights
from core.publish.charts import Series, bar_chart, line_chart, reliability_chart
from core.explain import EXPLAINERS, shown_explainers

# Repeated in the page itself, so a copy opened from disk is as locked down as the served one.
PAGE_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#1d1d1f}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:12px 0 4px}.sub{color:#555;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 9px;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f4f4f6}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart text{font-size:10px;fill:#333}
.chart .title{font-size:12px;font-weight:600}.chart .gridline{stroke:#eee}.chart .axes{fill:none;stroke:#999}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:12px}
.gallery.wide{grid-template-columns:repeat(auto-fill,minmax(640px,1fr))}
.gallery figure{margin:0;border:3px solid #fff;background:#fafafa}.gallery figure.wrong{border-color:#c81e1e}
.gallery img{width:100%;image-rendering:pixelated;display:block}
.gallery figcaption{font-size:12px;padding:2px 6px}.bad{color:#c81e1e;font-weight:600}
.warn{background:#fff4e5;border:1px solid #e69f00;padding:6px 10px}pre{background:#f6f6f8;padding:8px;overflow:auto}
"""


def write_report(out_dir: Path, result: dict[str, Any]) -> Path:
    """Render `out_dir/report.html` from a job's metrics (`result`) and its heatmap files."""
    sections = [
        _header(result),
        _warnings(result.get("warnings") or []),
        _summary_table(result),
        _deployment(result),
        _curves(result.get("history") or {}),
        _calibration(result),
        _per_class(result),
        _gallery(out_dir, result.get("gallery") or [], result.get("explainer") or "gradcam"),
        "<h2>Spec</h2><pre>" + escape(json.dumps(result.get("spec", {}), indent=2)) + "</pre>",
    ]
    page = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{PAGE_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(_title(result))}</title><style>{STYLE}</style></head><body>"
        + "".join(section for section in sections if section)
        + "</body></html>\n"
    )
    path = out_dir / REPORT
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _title(result: dict[str, Any]) -> str:
    return f"{result.get('spec', {}).get('name', 'job')}: distillation report"


def _header(result: dict[str, Any]) -> str:
    spec = result.get("spec", {})
    dataset = spec.get("dataset", {})
    source = dataset.get("name") or ("uploaded dataset" if dataset.get("id") else "local dataset")
    seconds = sum((result.get("seconds") or {}).values())
    start = starting_weights(spec)
    line = (f"{spec.get('teacher', {}).get('arch')} teacher → {spec.get('student', {}).get('arch')} student "
            f"(started from {start or 'random weights'}), "
            f"method {result.get('method') or 'custom'}, dataset {source} at {dataset.get('image_size')} px; "
            f"{seconds:.0f} s on {result.get('device', '?')}")
    fed = " ".join(fed_line(role, (result.get("inputs") or {})[role]) for role in ("student", "teacher")
                   if role in (result.get("inputs") or {}))
    return f"<h1>{escape(_title(result))}</h1><p class=\"sub\">{escape(line)}</p>" + (
        f"<p class=\"sub\">{escape(fed)}</p>" if fed else "")


def _warnings(warnings: list[dict[str, str]]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li><b>{escape(w.get('code', ''))}</b>: {escape(w.get('message', ''))}</li>" for w in warnings)
    return f'<div class="warn"><b>Warnings</b><ul>{items}</ul></div>'


def _pct(value: float | None) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None, digits: int = 3) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}f}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "&ndash;"
    return f"{value / 1e6:.2f} MB" if value >= 1e6 else f"{value / 1e3:.1f} kB"


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are trusted markup made by this module (numbers, escaped names)."""
    header = "".join(f"<th>{cell}</th>" for cell in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _summary_table(m: dict[str, Any]) -> str:
    sizes = m.get("sizes") or {}
    ratio = m.get("size_compression_ratio")
    rows = [
        ["top-1 accuracy", _pct(m.get("teacher_accuracy")), _pct(m.get("student_accuracy"))],
        ["agreement with the teacher (top-1)", "&ndash;", _pct(m.get("agreement"))],
        *_cosine_rows(m),
        ["ECE (15 bins)", _num(m.get("teacher_ece")), _num(m.get("ece"))],
        ["parameters", f"{m.get('teacher_params', 0):,}", f"{m.get('student_params', 0):,}"],
        ["safetensors size", _bytes(sizes.get("teacher_safetensors_bytes")),
         _bytes(sizes.get("student_safetensors_bytes"))],
        ["ONNX size", _bytes(sizes.get("teacher_onnx_bytes")), _bytes(sizes.get("student_onnx_bytes"))],
        ["CPU latency, batch 1 (PyTorch, median)", f"{_num(m.get('teacher_latency_ms'), 2)} ms",
         f"{_num(m.get('student_latency_ms'), 2)} ms"],
        ["compression (parameters / file size)", "",
         f"{_num(m.get('compression_ratio'), 1)}x / {_num(ratio, 1)}x"],
    ]
    return "<h2>Student vs teacher</h2>" + _table(["test set", "teacher", "student"], rows)


def _label(explainer: str) -> str:
    """The explainer's name for people ("B-cos"); an unknown name (an old report) is shown as it is."""
    known = EXPLAINERS.get(explainer)
    return escape(known.label if known is not None else explainer)


def _cosine_rows(m: dict[str, Any]) -> list[list[str]]:
    """Explanation cosine with the job's explainer, then with Grad-CAM when that is another explainer."""
    explainer = m.get("explainer") or "gradcam"
    rows = [[f"explanation cosine ({_label(explainer)}, mean)", "&ndash;", _num(m.get("explanation_cosine"))]]
    if explainer != "gradcam" and m.get("explanation_cosine_gradcam") is not None:
        rows.append(["explanation cosine (Grad-CAM, mean)", "&ndash;", _num(m.get("explanation_cosine_gradcam"))])
    return rows


def _deployment(m: dict[str, Any]) -> str:
    onnx = m.get("onnx")
    if onnx:
        status = (f"<p><code>student.onnx</code> (opset {onnx['opset']}, {_bytes(onnx['size_bytes'])}): onnxruntime "
                  f"matches PyTorch on all {onnx['images']} test images, max |logit difference| "
                  f"{onnx['max_abs_diff']:.2g} (tolerance {onnx['tolerance']:g}), same top-1 on every image.</p>")
    elif (m.get("spec", {}).get("export") or {}).get("onnx", True):
        status = "<p>No <code>student.onnx</code>: the export failed its checks (see the warnings).</p>"
    else:
        status = "<p>ONNX export was turned off in the spec.</p>"
    rows = [
        [escape(r["model"]), escape(r["runtime"]), escape(r["device"]), str(r["batch"]), _num(r["median_ms"], 2),
         _num(r["p90_ms"], 2), f"{r['images_per_s']:,.0f}"]
        for r in m.get("latency") or []
    ]
    table = _table(["model", "runtime", "device", "batch", "median ms", "p90 ms", "images/s"], rows) if rows else ""
    return "<h2>Deployment</h2>" + status + table


def _stage_charts(stage: str, history: list[dict[str, Any]]) -> str:
    epochs = [str(entry.get("epoch", i + 1)) for i, entry in enumerate(history)]
    terms = sorted({name for entry in history for name in entry.get("losses", {})})
    losses = [Series("total", [entry.get("loss") for entry in history])]
    if len(terms) > 1 or (terms and terms != ["ce"]):
        losses += [Series(name, [entry.get("losses", {}).get(name) for entry in history]) for name in terms]
    charts = [line_chart(f"{stage}: loss by term", epochs, losses)]
    accuracy = [key for key in ("train_accuracy", "test_accuracy") if any(key in entry for entry in history)]
    if accuracy:
        series = [Series(key.replace("_", " "), [entry.get(key) for entry in history]) for key in accuracy]
        charts.append(line_chart(f"{stage}: accuracy", epochs, series, y_range=(0.0, 1.0)))
    others = sorted({k for entry in history for k in entry if k.startswith("test_") and k not in accuracy})
    if others:
        series = [Series(key.replace("_", " "), [entry.get(key) for entry in history]) for key in others]
        charts.append(line_chart(f"{stage}: held-out", epochs, series))
    return f"<h3>{escape(stage)}</h3><div class=\"charts\">" + "".join(charts) + "</div>"


def _curves(history: dict[str, list[dict[str, Any]]]) -> str:
    stages = [(name, entries) for name, entries in history.items() if entries]
    if not stages:
        return ""
    return "<h2>Training curves</h2>" + "".join(_stage_charts(name, entries) for name, entries in stages)


def _calibration(m: dict[str, Any]) -> str:
    reliability = m.get("reliability") or {}
    charts = [reliability_chart(f"{model}: reliability (ECE {_num(m.get(key))})", reliability[model])
              for model, key in (("student", "ece"), ("teacher", "teacher_ece")) if model in reliability]
    if not charts:
        return ""
    return "<h2>Calibration</h2><div class=\"charts\">" + "".join(charts) + "</div>"


def _per_class(m: dict[str, Any]) -> str:
    per_class = m.get("per_class_accuracy") or {}
    teacher, student = per_class.get("teacher"), per_class.get("student")
    if teacher is None or student is None:
        return ""
    names = m.get("class_names") or [str(i) for i in range(len(student))]
    chart = bar_chart("per-class top-1 accuracy", names, [Series("teacher", teacher), Series("student", student)],
                      x_title="class")
    rows = [[escape(name), _pct(t), _pct(s)] for name, t, s in zip(names, teacher, student, strict=True)]
    return ("<h2>Per-class accuracy</h2><div class=\"charts\">" + chart + "</div>"
            + _table(["class", "teacher", "student"], rows))


def _gallery(out_dir: Path, tiles: list[dict[str, Any]], explainer: str = "gradcam") -> str:
    if not tiles:
        return ""
    shown = shown_explainers(explainer) if explainer in EXPLAINERS else [explainer]
    panels = "input | " + " | ".join(f"{who} {_label(name)}" for name in shown for who in ("teacher", "student"))
    ordered = sorted(tiles, key=lambda tile: not tile["misclassified"])  # stable: test-set order within groups
    figures = []
    for tile in ordered:
        data = base64.b64encode((out_dir / tile["file"]).read_bytes()).decode("ascii")
        teacher_class = "bad" if tile["teacher"] != tile["true"] else ""
        student_class = "bad" if tile["misclassified"] else ""
        cosines = tile.get("cosines") or {}
        if len(cosines) > 1:
            cosine = " &middot; ".join(f"{_label(name)} cosine {value:.2f}" for name, value in cosines.items())
        else:
            cosine = f"cosine {tile['cosine']:.2f}"
        figures.append(
            f'<figure class="{"wrong" if tile["misclassified"] else ""}">'
            f'<img src="data:image/png;base64,{data}" alt="test image {tile["index"]}: {panels}">'
            f'<figcaption>#{tile["index"]} true <b>{escape(tile["true"])}</b> &middot; teacher '
            f'<span class="{teacher_class}">{escape(tile["teacher"])}</span> &middot; student '
            f'<span class="{student_class}">{escape(tile["student"])}</span> &middot; {cosine}'
            "</figcaption></figure>"
        )
    wrong = sum(tile["misclassified"] for tile in tiles)
    intro = (f"<p>{panels[0].upper() + panels[1:]} for {len(tiles)} evenly spaced test images, every map "
             f"for the teacher's top-1 class; the student's {wrong} mistakes come first (red frame).</p>")
    layout = "gallery wide" if len(shown) > 1 else "gallery"  # five panels a tile need wider columns
    return "<h2>Heatmaps</h2>" + intro + f'<div class="{layout}">' + "".join(figures) + "</div>"
