#!/usr/bin/env python3
"""The convert script: `scripts/convert.py MODEL.keras [--out DIR] [options]`.

A thin wrapper over `edgetrunc.export.convert` with exactly the options of
`edgetrunc convert` (see `--help`); it exits 0 on success and 2 on bad input.
"""

import sys

from edgetrunc.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
