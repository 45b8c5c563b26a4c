"""`edgetrunc migrate`: glue between the parsed arguments and `edgetrunc.migrate.migrate`.

Parses `--define NAME=VALUE` globals and `--truncation-class CLASS[=T]`, runs the
migration, and prints the report as a table (stdout) or as JSON (`--json`, stdout);
progress goes to stderr.
"""

from __future__ import annotations

import ast
import math
import sys

from edgetrunc.cli import _args
from edgetrunc.errors import InputError

DESCRIPTION = ("Load a legacy model (Keras 3 .keras, or tf.keras 2 .h5, .keras or SavedModel "
               "folder) whose truncation is a Lambda, a tf.clip_by_value / minimum-maximum op "
               "layer or a custom class named with --truncation-class; replace each with "
               "Truncation, check that outputs are unchanged, save as .keras.")

VERDICT_LABELS = {
    "clip": "clip -> Truncation",
    "not-clip": "not a clip (kept)",
    "clip-other-gradient": "clip, other gradient (kept)",
    "mapped": "mapped -> Truncation",
    "elementwise": "elementwise -> Elementwise",
}


def add_arguments(p) -> None:
    from edgetrunc.migrate import migrate as f

    p.add_argument("legacy_path", metavar="LEGACY", help="a .keras or .h5 file, or a SavedModel "
                   "folder")
    _args.add_out(p, required=True, metavar="NEW.keras", dest="out_path")
    _args.add_trust_lambda(p, f)
    _args.add_json(p, "print the migration report as JSON")
    _args.add_parameter(p, f, "extra_globals", "a global a saved lambda reads but the file does "
                        "not store, e.g. T=3.0 (VALUE is a Python literal; repeatable)",
                        flag="--define", action="append", metavar="NAME=VALUE")
    _args.add_parameter(p, f, "truncation_classes", "a custom layer class or an activation "
                        "function saved by name that is a truncation (clip to [-T, T]): map it "
                        "to Truncation, T from its saved config, its one stored scalar weight, "
                        "or given (repeatable); checked against its code when --custom-objects "
                        "gives it or Keras knows it", flag="--truncation-class", action="append",
                        metavar="CLASS[=T]")
    _args.add_custom_objects(p, f)


def parse_defines(items) -> dict:
    """`["T=3.0", "name='x'"]` -> `{"T": 3.0, "name": "x"}` (values are Python literals)."""
    values = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise InputError(f"--define {item}: expected NAME=VALUE with a Python name, e.g. T=3.0")
        try:
            values[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise InputError(f"--define {item}: VALUE must be a Python literal "
                             "(number, string, tuple, list)") from None
    return values


def run(args) -> int:
    from edgetrunc._text import dumps_json
    from edgetrunc.migrate import migrate, parse_truncation_classes

    parsed = {"extra_globals": parse_defines(args.extra_globals),
              "truncation_classes": parse_truncation_classes(args.truncation_classes)}
    report = migrate(**{**_args.keywords(migrate, args), **parsed})
    if args.json:
        sys.stdout.write(dumps_json(report))
    else:
        print(format_report(report))
    return 0


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _bounds(layer) -> str:
    if layer.get("lower") is None:
        return "-"
    return f"[{_number(layer['lower'])}, {_number(layer['upper'])}]"


def _ops(counts) -> str:
    if "error" in counts:
        return f"conversion failed ({counts['error']})"
    return ", ".join(f"{op} {n}" for op, n in counts.items()) or "none"


def _layer_lines(layers) -> list:
    """Layer, verdict, bounds, gradient as aligned columns (no rule), the note after them."""
    from edgetrunc._text import table

    rows = [(layer["layer"], VERDICT_LABELS.get(layer["verdict"], layer["verdict"]),
             _bounds(layer), layer.get("gradient") or "-") for layer in layers]
    header, rule, *body = table(("layer", "verdict", "bounds", "gradient"), rows).split("\n")
    notes = ["note"] + [layer.get("note") or "" for layer in layers]
    return [f"{line.ljust(len(rule))}  {note}" for line, note in zip([header, *body], notes)]


def _verification_lines(verification) -> list:
    shapes = "; ".join(f"{name} {tuple(shape[0])}" for name, shape in verification["inputs"].items())
    lines = ["", f"verification on sample inputs ({shapes}):"]
    diffs = ", ".join(f"{name} {_number(v)}" for name, v in verification["max_abs_diff"].items())
    lines.append(f"  max |migrated - legacy|: {diffs}")
    if verification.get("expected_difference"):
        lines.append(f"  expected difference: {verification['expected_difference']}")
    rebuild = max(verification["rebuild_max_abs_diff"].values(), default=math.nan)
    lines.append(f"  max |migrated - legacy with exact clips|: {_number(rebuild)} "
                 "(every other layer and weight kept)")
    original = verification.get("original_code") or {}
    if original.get("max_abs_diff"):
        diffs = ", ".join(f"{name} {_number(v)}" for name, v in original["max_abs_diff"].items())
        lines.append(f"  max |migrated - original built with its code|: {diffs}")
    if verification.get("note"):
        lines.append(f"  note: {verification['note']}")
    lines.append("  " + ("passed" if verification["passed"]
                         else "FAILED: " + "; ".join(verification["failures"])))
    return lines


def _ops_lines(ops) -> list:
    lines = ["", "TFLite ops:"]
    total = f" ({ops['total_before']} ops)" if "total_before" in ops else ""
    lines.append(f"  before{total}: {_ops(ops['before'])}")
    total = f" ({ops['total_after']} ops)" if "total_after" in ops else ""
    lines.append(f"  after{total}:  {_ops(ops['after'])}")
    if "removed" in ops:
        lines.append(f"  removed: {_ops(ops['removed'])}; added: {_ops(ops['added'])}")
    return lines


def format_report(report) -> str:
    """The migration report as a plain-text table and summary lines."""
    lines = [f"{report['legacy']} ({report['format']}): {report['message']}"]
    if report["layers"]:
        lines += [""] + _layer_lines(report["layers"])
    verification = report.get("verification")
    if verification:
        lines += _verification_lines(verification)
    if report.get("safe_mode"):
        lines.append(f"{'  ' if verification else ''}safe mode: {report['safe_mode']}")
    if report.get("compile"):
        lines.append(f"compile config: {report['compile']}")
    if report.get("tflite_ops"):
        lines += _ops_lines(report["tflite_ops"])
    if report.get("lambda_globals"):
        lines.append(f"\nlambda globals given: {', '.join(report['lambda_globals'])}")
    lines.append(f"written: {report['out']}" if report["written"] else "nothing written")
    return "\n".join(lines)
