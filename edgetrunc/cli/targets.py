"""`edgetrunc targets`: what integer-only targets make of a full-integer `.tflite`.

For each Ethos-U configuration, Vela's own verdict (`export.vela.vela_report`: operators on
the NPU and on the CPU, SRAM, estimated inference time); then TFLite Micro
(`runtime.micro.micro_check`): whether it runs the artifact, the tensor arena it needs, and
its outputs against ai-edge-litert's on held-out cover/stego tiles, in quantization steps.
Exit 1 when an operator is left to the CPU or TFLite Micro differs by more than one step.
"""

from __future__ import annotations

import sys

from edgetrunc.cli import _args

DESCRIPTION = ("Vela's NPU/CPU operator split, SRAM and time for Ethos-U55/U65, and TFLite "
               "Micro's arena and outputs, for a full-integer .tflite.")
MAX_STEPS = 1


ACCELERATORS = ("ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512")


def add_arguments(p) -> None:
    p.add_argument("artifact", metavar="ARTIFACT", help="full-integer .tflite (convert --tflite int8-full)")
    _args.add_parameter(p, targets_report, "accelerators", "Vela accelerator configurations",
                        type=_args.choices_list("accelerator", ACCELERATORS))
    _args.add_parameter(p, targets_report, "samples", "held-out tiles run through TFLite Micro",
                        type=_args.count(256))
    _args.add_json(p, "print the report as JSON on stdout")


def _tiles(runner, samples: int):
    from edgetrunc.data.dataset import load_pairs
    from edgetrunc.runtime.scoring import runner_geometry

    geometry = runner_geometry(runner)
    pairs = load_pairs("embedded", split="test", max_pairs=max(1, samples // 2),
                       stride=geometry.tile, tile=geometry.tile, channels=geometry.channels)
    return pairs.x[:samples]


def targets_report(artifact, accelerators=("ethos-u55-256", "ethos-u65-256"),
                   samples: int = 8) -> dict:
    from edgetrunc.export.vela import vela_report
    from edgetrunc.runtime.micro import micro_check
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    from edgetrunc.errors import InputError

    vela = [vela_report(artifact, accelerator) for accelerator in accelerators]
    try:
        micro = micro_check(artifact, _tiles(TFLiteRunner(artifact), samples))
    except InputError as exc:  # the verdict on a model TFLite Micro cannot run
        micro = {"runs": False, "error": str(exc)}
    passed = (all(v["cpu_operators"] == 0 for v in vela) and micro["runs"]
              and micro["max_step_difference"] <= MAX_STEPS)
    return {"artifact": str(artifact), "vela": vela, "micro": micro, "passed": passed}


def format_report(report: dict) -> str:
    from edgetrunc._text import table

    rows = [(v["accelerator"], f"{v['npu_operators']} ({v['npu_percent']:g}%)",
             v["cpu_operators"], f"{v['sram_kib']:.0f} KiB", f"{v['inference_ms']:.2f} ms")
            for v in report["vela"]]
    micro = report["micro"]
    verdict = (f"TFLite Micro: runs, arena {micro['arena_bytes']} bytes; outputs vs "
               f"ai-edge-litert on {micro['samples']} tiles: max {micro['max_step_difference']} "
               "step(s)" if micro["runs"] else f"TFLite Micro: does not run ({micro['error']})")
    return "\n".join([
        table(("Vela", "NPU operators", "CPU operators", "SRAM", "estimated time"), rows), "",
        verdict,
        "targets " + ("passed" if report["passed"] else "FAILED")])


def run(args) -> int:
    from edgetrunc._io import require_file
    from edgetrunc._text import dumps_json

    require_file(args.artifact, "artifact", suffixes=(".tflite",))
    report = targets_report(**_args.keywords(targets_report, args))
    sys.stdout.write(dumps_json(report) if args.json else format_report(report) + "\n")
    return 0 if report["passed"] else 1
