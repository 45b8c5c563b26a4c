import sys

from edgetrunc.cli import main

sys.exit(main())
