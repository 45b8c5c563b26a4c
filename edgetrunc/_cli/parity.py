"""`edgetrunc parity`: compare a Keras model with its TFLite / ONNX artifacts and report.

Report paths are checked before anything runs (unwritable path, a folder, or one of the
inputs: exit 2). The terminal table goes to stdout (to stderr when the JSON report goes to
stdout with `--json -`); exit 0 when every artifact passes, 1 on a parity failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgetrunc import _log
from edgetrunc.errors import InputError


def _check_report_path(path, option, inputs) -> None:
    if path is None or str(path) == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{option} {path}: is a folder; expected a file path")
    resolved = target.resolve()
    for other in inputs:
        if Path(other).exists() and Path(other).resolve() == resolved:
            raise InputError(f"{option} {path}: refusing to overwrite an input file")
    parent = target.parent if str(target.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {existing} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise InputError(f"{option} {path}: file is not writable")


def run(args) -> int:
    from edgetrunc.parity.check import check_parity
    from edgetrunc.parity.report import terminal_report, write_html, write_json

    inputs = [args.model, *args.artifacts]
    if args.inputs in ("mix", "random", "covers", "stego") and Path(args.inputs).is_dir():
        _log.warn(f"--inputs {args.inputs}: the built-in '{args.inputs}' inputs are used, not the "
                  f"folder of that name; pass ./{args.inputs} for the folder")
    _check_report_path(args.json, "--json", inputs)
    _check_report_path(args.html, "--html", inputs)
    _check_report_path(args.save_inputs, "--save-inputs", inputs)
    if args.strict_layers and not args.per_layer:
        raise InputError("--strict-layers: needs --per-layer (it judges the per-layer comparison)")
    if args.html == "-":
        raise InputError("--html -: the HTML report needs a file path")
    report = check_parity(args.model, args.artifacts, samples=args.samples, inputs=args.inputs,
                          per_layer=args.per_layer, probes=not args.no_probes,
                          strict_nan=args.strict_nan, atol=args.atol, rtol=args.rtol, seed=args.seed,
                          threads=args.threads, batch_size=args.batch_size,
                          save_inputs=args.save_inputs, strict_layers=args.strict_layers)
    table = terminal_report(report)
    stream = sys.stderr if args.json == "-" else sys.stdout
    stream.write(table)
    stream.flush()
    if args.json:
        write_json(report, args.json)
        if args.json != "-":
            _log.info(f"wrote {args.json}")
    if args.html:
        write_html(report, args.html)
        _log.info(f"wrote {args.html}")
    return 0 if report.passed else 1
