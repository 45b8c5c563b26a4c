"""Parity reports: the terminal table, the JSON report and one self-contained HTML page.

`terminal_report(report)` is plain text (artifact table, failures, first divergent layers,
per-layer table, probe table, warnings). Failures and warnings name parameters
(`strict_nan=True`); the text and the page show them as flags where the caller gives its
`{parameter: flag}` map (`flags=`, as `edgetrunc parity` does); the JSON keeps the names.
`write_json(report, path)` writes `report.to_dict()` atomically (`-` for stdout). `write_html(report, path)` writes one page with every plot
embedded as a base64 PNG (matplotlib, Agg): the error histogram of each artifact, the
per-layer error curve, and the stego probability of Keras against each artifact. No TensorFlow.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from edgetrunc._io import write_text_atomic
from edgetrunc._text import dump_json, printable, table
from edgetrunc.errors import flags_named
from edgetrunc.runtime.host import where_label


def _fmt(value, spec=".2e"):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def artifact_rows(report) -> list:
    rows = []
    for a in report.artifacts:
        c = a.comparison
        where = a.metadata.get("where")  # x86-64 or aarch64 side by side
        speed = a.samples_per_second  # NaN for an emulated recording: not a device figure
        rows.append([
            _short(a.path) + (f" [{where_label(where)}]" if where else ""), a.format, a.precision,
            _fmt(c.max_abs_error), _fmt(c.mean_abs_error),
            _fmt(c.p99_abs_error), _fmt(c.cosine, ".6f"), _fmt(c.decision_agreement, ".3f"),
            _fmt(c.accuracy_delta, "+.3f"), _fmt(c.p_e, ".3f"), f"{speed:.1f}" if speed == speed else "-",
            "PASS" if a.passed else "FAIL"])
    return rows


def output_rows(report) -> list:
    """One row per output of every artifact of a model with several outputs."""
    return [[_short(a.path), o["name"], "x".join(map(str, o["shape"])) or "-",
             _fmt(o["max_abs_error"]), _fmt(o["mean_abs_error"]), _fmt(o["cosine"], ".6f"),
             f"{o['elements_failed']}/{o['elements']}"]
            for a in report.artifacts for o in a.comparison.outputs]


def terminal_report(report, flags: dict | None = None) -> str:
    """The report as plain text; with `flags` (`{parameter: flag}`), a failure or warning
    that names a parameter as `name=VALUE` shows it as its flag (`errors.flags_named`)."""
    flags = flags or {}
    d = report.to_dict()
    inputs = d["inputs"]
    ref_acc = next((a.comparison.accuracy_reference for a in report.artifacts
                    if a.comparison.accuracy_reference is not None), None)
    ref_pe = next((a.comparison.p_e_reference for a in report.artifacts
                   if a.comparison.p_e_reference is not None), None)
    parts = [
        f"parity: {_short(report.reference['path'])} (Keras) vs {len(report.artifacts)} artifact(s) on "
        f"{d['samples']} inputs ({inputs['kind']}: "
        + ", ".join(f"{k} {v}" for k, v in inputs["composition"].items()) + ")",
        f"reference: {report.reference['samples_per_second']:.1f} samples/s"
        + (f", accuracy {ref_acc:.3f}" if ref_acc is not None else "")
        + (f", P_E {ref_pe:.3f}" if ref_pe is not None else "")
        + (f" on {report.artifacts[0].comparison.labelled} labelled inputs" if ref_acc is not None else ""),
        "",
        table(["artifact", "format", "prec", "max abs", "mean abs", "p99 abs", "cosine", "agree",
                "acc delta", "P_E", "samples/s", "verdict"], artifact_rows(report)),
    ]
    if output_rows(report):
        parts += ["", "per output:", table(["artifact", "output", "shape", "max abs", "mean abs",
                                            "cosine", "failed"], output_rows(report))]
    for a in report.artifacts:
        for failure in a.comparison.failures:
            parts.append(flags_named(f"  FAIL {_short(a.path)}: {failure}", flags))
        flipped = report.disagreements(a.path, limit=3)
        if flipped and not a.passed:
            parts.append(f"  flipped decisions in {_short(a.path)}: " + ", ".join(
                f"{item['input']} ({item['keras']:.3f} -> {item['artifact']:.3f})" for item in flipped))
        if a.first_divergent_layer:
            fused = next((layer.fused_layers for layer in a.layers if layer.divergent), [])
            extra = f" (one op in the artifact: {' + '.join(fused)})" if len(fused) > 1 else ""
            parts.append(f"  first divergent layer in {_short(a.path)}: {a.first_divergent_layer}{extra}")
    if report.per_layer:
        for a in (a for a in report.artifacts if a.layers):
            parts += ["", f"per layer: {_short(a.path)} ({a.precision}; normalized error = max|error| "
                      "/ max|Keras output|)"]
            rows = []
            for layer in a.layers:
                note = ""
                if layer.status == "fused":
                    note = f"fused into {layer.fused_into}"
                elif layer.status == "folded":
                    note = "per-channel affine of the Keras output (rest folded into the next op)"
                elif layer.divergent:
                    note = "DIVERGES"
                rows.append([layer.index, layer.layer, layer.status, _fmt(layer.normalized_error),
                             _fmt(layer.local_error), _fmt(layer.max_abs_error),
                             _fmt(layer.error_over_scale, ".2f"), (layer.layout or "-"), note])
            parts.append(table(["#", "layer", "status", "norm err", "own err", "max abs", "err/scale",
                                 "layout", "note"], rows))
            parts += step_lines(a)
    if report.probes:
        parts += ["", "truncation probes (deviations from clip(x, lower, upper) with NaN kept):"]
        rows = []
        for p in report.probes:
            nan_row = next((v for v in p.values if v["input"] == "NaN"), None)
            bad = [f"{v['input']}->{v['got']}" for v in p.values if v["status"] != "ok"]
            rows.append([p.layer, f"[{p.lower:g}, {p.upper:g}]", p.backend, p.precision,
                         nan_row["got"] if nan_row else "-", p.nan_deviations, p.value_deviations,
                         p.error or (", ".join(bad) if bad else "ok")])
        parts.append(table(["layer", "bounds", "backend", "prec", "NaN ->", "NaN dev", "value dev",
                             "deviations"], rows))
    for failure in report.probe_failures:
        parts.append(flags_named(f"  FAIL probe {failure}", flags))
    if report.golden:
        parts.append("golden outputs: " + ", ".join(
            f"{g.runner} {'unchanged' if g.passed else 'MOVED'}" for g in report.golden))
    parts += [f"  FAIL golden {failure}" for g in report.golden for failure in g.failures]
    for warning in report.warnings:
        parts.append(flags_named(f"warning: {warning}", flags))
    parts += ["", f"parity {'PASSED' if report.passed else 'FAILED'} ({report.seconds:.1f} s)"]
    # names from files (tensor names, photo names) may hold control characters: escaped
    return "\n".join(printable(line) for line in "\n".join(parts).split("\n")) + "\n"


def first_over_one_step(layers):
    """The first compared integer layer (`per_layer.LayerComparison`) whose error, rms over
    its elements in steps of its own quantization scale, exceeds one step; or None."""
    return next((layer for layer in layers if (layer.rms_error_over_scale or 0.0) > 1.0), None)


def step_lines(artifact) -> list:
    """For an artifact with quantized tensors: the first layer whose rms error exceeds one
    step of its own quantization scale (TFLite's QuantizationDebugger rmse/scale), or that
    none does."""
    if not any(layer.rms_error_over_scale is not None for layer in artifact.layers):
        return []
    first = first_over_one_step(artifact.layers)
    if first is None:
        return ["  no layer's rms error exceeds one step of its quantization scale"]
    return [f"  first layer whose rms error exceeds one step of its quantization scale: "
            f"{first.layer} ({first.rms_error_over_scale:.2f} steps, max {first.error_over_scale:.1f})"]


def write_json(report, path, protect=()) -> None:
    """`report.to_dict()` as strict JSON (non-finite numbers as 'NaN' / 'inf' / '-inf') to
    `path`, atomically, or to stdout when `path` is '-'. `protect`: the inputs (files or
    folders, see `parity.inputs.protected_inputs`) the report must never replace."""
    dump_json(report.to_dict(), path, nan="string", protect=protect)


# -- HTML ----------------------------------------------------------------------------------

def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def error_histogram(report):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for a in report.artifacts:
        errors = report.output_errors.get(a.path)
        if errors is None or not errors.size:
            continue
        floor = 1e-10
        values = np.log10(np.maximum(errors, floor))
        ax.hist(values, bins=40, histtype="step", linewidth=1.6,
                label=f"{_short(a.path)} (max {a.comparison.max_abs_error:.1e})")
    ax.set_xlabel("log10 |artifact - Keras| per output element (exact matches shown at -10)")
    ax.set_ylabel("elements")
    ax.set_title("Output error against the Keras reference")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def layer_error_curve(report):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    names = []
    for a in report.artifacts:
        if not a.layers:
            continue
        names = [layer.layer for layer in a.layers]
        xs = [layer.index for layer in a.layers if layer.normalized_error is not None]
        ys = [max(layer.normalized_error, 1e-9) for layer in a.layers if layer.normalized_error is not None]
        (line,) = ax.semilogy(xs, ys, marker="o", markersize=4, label=_short(a.path))
        divergent = [layer for layer in a.layers if layer.divergent]
        if divergent:
            first = divergent[0]
            ax.plot([first.index], [max(first.normalized_error or 1e-9, 1e-9)], marker="x", markersize=12,
                    color=line.get_color(), markeredgewidth=2.5)
    from edgetrunc.parity.per_layer import LAYER_TOLERANCES

    for precision in sorted({a.precision for a in report.artifacts if a.layers}):
        bound = LAYER_TOLERANCES.get(precision, LAYER_TOLERANCES["fp32"])
        ax.axhline(bound, color="gray", linestyle="--", linewidth=0.9)
        ax.annotate(f"{precision} bound", (0, bound), textcoords="offset points", xytext=(2, 3),
                    fontsize=7, color="gray")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("max|error| / max|Keras output|")
    ax.set_title("Per-layer error (x: first divergent layer)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def probability_scatter(report):
    import matplotlib.pyplot as plt

    shown = [a for a in report.artifacts if report.probabilities.get(a.path) is not None]
    if report.reference_probability is None or not shown:
        return None
    cols = min(3, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.5 * rows), squeeze=False)
    labels = report.inputs.labels
    ref = report.reference_probability
    for ax, a in zip(axes.ravel(), shown):
        got = report.probabilities[a.path]
        for value, color, name in ((0, "tab:blue", "cover"), (1, "tab:red", "stego"),
                                   (-1, "tab:gray", "unlabelled")):
            mask = labels == value
            if mask.any():
                ax.scatter(ref[mask], got[mask], s=12, alpha=0.7, color=color, label=name)
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
        ax.axhline(0.5, color="gray", linewidth=0.5, linestyle=":")
        ax.axvline(0.5, color="gray", linewidth=0.5, linestyle=":")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("Keras stego probability")
        ax.set_ylabel("artifact stego probability")
        agree = a.comparison.decision_agreement
        ax.set_title(f"{_short(a.path)}\nagreement {agree:.3f}" if agree is not None else _short(a.path),
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.ravel()[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _html_table(headers, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(report, flags: dict | None = None) -> str:
    """The HTML page; `flags` as in `terminal_report`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    d = report.to_dict()
    verdict = "PASSED" if report.passed else "FAILED"
    sections = [
        f"<h1>edgetrunc parity: <span class='{verdict.lower()}'>{verdict}</span></h1>",
        f"<p>Reference <code>{html.escape(report.reference['path'])}</code> (Keras); "
        f"{d['samples']} inputs ({html.escape(d['inputs']['kind'])}: "
        + html.escape(", ".join(f"{k} {v}" for k, v in d["inputs"]["composition"].items()))
        + f"), seed {d['inputs']['seed']}.</p>",
        _html_table(["artifact", "format", "precision", "max abs", "mean abs", "p99 abs", "cosine",
                     "agreement", "acc delta", "P_E", "samples/s", "verdict"], artifact_rows(report)),
    ]
    if output_rows(report):
        sections.append("<h2>Per output</h2>" + _html_table(
            ["artifact", "output", "shape", "max abs", "mean abs", "cosine", "failed"],
            output_rows(report)))
    failures = [f"{_short(a.path)}: {f}" for a in report.artifacts for f in a.comparison.failures]
    failures += [f"{_short(a.path)}: first divergent layer {a.first_divergent_layer}"
                 for a in report.artifacts if a.first_divergent_layer]
    failures += [f"probe {f}" for f in report.probe_failures]
    failures += [f"golden {f}" for g in report.golden for f in g.failures]
    failures = [flags_named(f, flags or {}) for f in failures]
    if failures:
        sections.append("<h2>Failures</h2><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in failures)
                        + "</ul>")
    if report.warnings:
        warnings = [flags_named(w, flags or {}) for w in report.warnings]
        sections.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
                        + "</ul>")
    sections.append("<h2>Output error per artifact</h2>"
                    f"<img alt='error histogram' src='{error_histogram(report)}'>")
    scatter = probability_scatter(report)
    if scatter:
        sections.append("<h2>Stego probability: Keras vs each artifact</h2>"
                        f"<img alt='stego probability' src='{scatter}'>")
    if report.per_layer and any(a.layers for a in report.artifacts):
        sections.append("<h2>Per-layer error</h2>"
                        f"<img alt='per-layer error' src='{layer_error_curve(report)}'>")
        for a in (a for a in report.artifacts if a.layers):
            rows = [[layer.index, layer.layer, layer.status, layer.tensor or "-", _fmt(layer.normalized_error),
                     _fmt(layer.local_error), _fmt(layer.error_over_scale, ".2f"), layer.fused_into or "",
                     "DIVERGES" if layer.divergent else ""] for layer in a.layers]
            sections.append(f"<h3>{html.escape(_short(a.path))}</h3>" + _html_table(
                ["#", "layer", "status", "artifact tensor", "norm err", "own err", "err/scale", "fused into",
                 ""], rows))
    if report.probes:
        rows = [[p.layer, f"[{p.lower:g}, {p.upper:g}]", p.backend, p.precision]
                + [next((v["got"] for v in p.values if v["input"] == k), "-") for k in
                   ("+T+ulp", "-T-ulp", "+1e30", "+inf", "-inf", "NaN")]
                + [p.nan_deviations, p.value_deviations, p.error or ""] for p in report.probes]
        sections.append("<h2>Truncation probes</h2>" + _html_table(
            ["layer", "bounds", "backend", "precision", "+T+ulp", "-T-ulp", "+1e30", "+inf", "-inf", "NaN",
             "NaN dev", "value dev", "error"], rows))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f2f2f2}"
             ".passed{color:#1a7f37}.failed{color:#c62828}img{max-width:100%}code{font-size:13px}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>edgetrunc parity report</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")


def write_html(report, path, protect=(), flags: dict | None = None) -> None:
    """The HTML page to `path`, atomically, never over one of the inputs in `protect`."""
    write_text_atomic(path, html_report(report, flags), protect=protect)
