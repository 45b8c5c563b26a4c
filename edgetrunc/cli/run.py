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
    from edgetrunc.runtime.recorded import record_outputs as f

    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("inputs_path", metavar="INPUTS.npz")
    _args.add_out(p, required=True, metavar="OUTPUTS.npz", dest="out_path")
    _args.add_threads(p, f)
    _args.add_parameter(p, f, "intermediates", "also record every intermediate tensor of the "
                        "first N inputs, for a layer-by-layer comparison with a recording made "
                        "elsewhere", type=_args.count(1_000_000), metavar="N")
    _args.add_json(p, "print the recording's metadata as JSON")


def run(args) -> int:
    from edgetrunc import _log
    from edgetrunc._text import dumps_json
    from edgetrunc.runtime.host import where_label
    from edgetrunc.runtime.recorded import record_outputs

    record = record_outputs(**_args.keywords(record_outputs, args))
    if args.json:
        sys.stdout.write(dumps_json(record))
    else:
        print(f"{record['artifact']} ({record['format']} {record['precision']}, {record['backend']}) "
              f"on {record['samples']} inputs, {where_label(record['where'])}, {record['platform']}: "
              f"wrote {args.out_path}")
        for name, shape in record.get("outputs", {}).items():
            print(f"  output {name}: {shape}")
    _log.info(f"compare on the machine with Keras: edgetrunc parity MODEL.keras {args.out_path} "
              f"--inputs {args.inputs_path}")
    return 0
