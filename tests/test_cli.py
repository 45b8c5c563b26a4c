"""Command-line contract shared by every subcommand: help, version, usage errors exit 2."""

import subprocess
import sys

import pytest

from edgetrunc.cli import build_parser, main

COMMANDS = ["train", "evaluate", "convert", "parity", "infer", "bench", "migrate"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "edgetrunc", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    out = _run("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "usage: edgetrunc " + command in capsys.readouterr().out


def test_no_command_is_usage_error():
    out = _run()
    assert out.returncode == 2
    assert "usage:" in out.stderr


def test_unknown_option_and_bad_values_exit_2(capsys):
    for argv in (["infer"], ["train", "--payload", "1.5"], ["train", "--payload", "0"],
                 ["convert", "m.keras", "--tflite", "fp64"], ["bench", "a.tflite", "--threads", "0"],
                 ["parity", "m.keras", "a.onnx", "--samples", "-3"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
    err = capsys.readouterr().err
    assert "payload must be in (0, 1]" in err and "unknown precision fp64" in err


def test_version():
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.startswith("edgetrunc ")
