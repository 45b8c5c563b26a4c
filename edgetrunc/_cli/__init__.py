"""Glue of each subcommand: `edgetrunc/_cli/<command>.py` defines `run(args) -> exit code`."""
