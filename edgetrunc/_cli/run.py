"""`edgetrunc run`: record an artifact's outputs on saved inputs, for a parity check elsewhere.

TensorFlow-free (it runs on the device). Prints what was recorded, or its metadata as JSON
with `--json`; the `.npz` is written atomically and never over the artifact or the inputs.
"""

from __future__ import annotations

import json
import sys

from edgetrunc import _log


def run(args) -> int:
    from edgetrunc.runtime.recorded import record_outputs

    record = record_outputs(args.artifact, args.inputs, args.out, threads=args.threads)
    if args.json:
        json.dump(record, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{record['artifact']} ({record['format']} {record['precision']}, {record['backend']}) "
              f"on {record['samples']} inputs, {record['platform']}: wrote {args.out}")
    _log.info(f"compare on the machine with Keras: edgetrunc parity MODEL.keras {args.out} "
              f"--inputs {args.inputs}")
    return 0
