"""Shared fixtures: quiet TensorFlow, fixed seeds, the command line run in-process."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

# edgetrunc's pytest plugin (also loaded by its pytest11 entry point once installed); pytester
# runs a user's test file in tests/test_testing.py
pytest_plugins = ["edgetrunc.testing.plugin", "pytester"]


@pytest.fixture(autouse=True)
def _seed():
    import numpy as np

    np.random.seed(0)
    yield


@pytest.fixture
def cli(capsys):
    """`cli(*args)` runs `edgetrunc -q ARGS` in this process: `(exit code, stdout, stderr)`."""
    from edgetrunc.cli import main

    def run(*args):
        code = main(["-q", *map(str, args)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
