"""`edgetrunc run`: record an artifact's outputs on saved inputs, for a parity check elsewhere.

TensorFlow-free (it runs on the device). Prints what was recorded, or its metadata as JSON
with `--json`; the `.npz` is written atomically and never over the artifact or the inputs.
"""

from __future__ import annotations

import sys

from edgetrunc.cli import _args

DESCRIPTION = ("Run a .tflite or .onnx artifact on the inputs saved by `edgetrunc parity "
               "--save-inputs` and record its outputs (with the artifact's hash and this "
               "machine's platform); compare them with Keras on another machine: "
               "`edgetrunc parity MODEL.keras OUTPUTS.npz --inputs INPUTS.npz`.")


def add_arguments(p) -> None:
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("inputs", metavar="INPUTS.npz")
    _args.add_out(p, required=True, metavar="OUTPUTS.npz")
    _args.add_threads(p)
    p.add_argument("--intermediates", type=_args.count(1_000_000), default=0, metavar="N",
                   help="also record every intermediate tensor of the first N inputs, for a "
                   "layer-by-layer comparison with a recording made elsewhere (default: 0)")
    _args.add_json(p, "print the recording's metadata as JSON")


def run(args) -> int:
    from edgetrunc import _log
    from edgetrunc._text import dumps_json
    from edgetrunc.runtime.host import where_label
    from edgetrunc.runtime.recorded import record_outputs

    record = record_outputs(args.artifact, args.inputs, args.out, threads=args.threads,
                            intermediates=args.intermediates)
    if args.json:
        sys.stdout.write(dumps_json(record))
    else:
        print(f"{record['artifact']} ({record['format']} {record['precision']}, {record['backend']}) "
              f"on {record['samples']} inputs, {where_label(record['where'])}, {record['platform']}: "
              f"wrote {args.out}")
        for name, shape in record.get("outputs", {}).items():
            print(f"  output {name}: {shape}")
    _log.info(f"compare on the machine with Keras: edgetrunc parity MODEL.keras {args.out} "
              f"--inputs {args.inputs}")
    return 0
