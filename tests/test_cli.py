"""Command-line contract shared by every subcommand: help, version, usage errors exit 2."""

import subprocess
import sys

import pytest

from edgetrunc.cli import build_parser, main

COMMANDS = ["train", "evaluate", "convert", "parity", "infer", "bench", "run", "migrate"]


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


def test_help_of_every_command_imports_no_tensorflow():
    """`--help` is instant: building every command's options (their defaults read from the
    library's signatures) imports neither TensorFlow nor Keras."""
    code = ("import sys\nfrom edgetrunc.cli import build_parser\nparser = build_parser()\n"
            f"for command in {COMMANDS + ['targets']!r}:\n"
            "    try:\n        parser.parse_args([command, '--help'])\n"
            "    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


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


@pytest.mark.slow
def test_tensorflow_commands_print_no_banner_and_keep_onednn(tmp_path):
    """TensorFlow's start-up notices (oneDNN, absl preamble) and TFLite's XNNPACK line stay off
    stderr, without turning oneDNN off (2-3x slower convolutions on x86)."""
    import os
    from pathlib import Path

    models = Path(__file__).resolve().parent.parent / "models"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    code = ("import os, sys; from edgetrunc.cli import main; "
            f"rc = main(['-q', 'parity', {str(models / 'tlunet.keras')!r}, {str(models / 'tlunet_fp32.tflite')!r}, "
            "'--samples', '2', '--inputs', 'random', '--no-probes']); "
            "print('onednn', os.environ.get('TF_ENABLE_ONEDNN_OPTS')); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "onednn None" in result.stdout
