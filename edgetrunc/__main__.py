"""`python -m edgetrunc`: the command line (`edgetrunc.cli.main`)."""

import sys

from edgetrunc.cli import main

sys.exit(main())
