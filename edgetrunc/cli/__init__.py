"""The command line: `main(argv)` runs one command; `build_parser()` declares them all.

Each command is a module `edgetrunc/cli/<command>.py` with `DESCRIPTION`,
`add_arguments(parser)` and `run(args) -> exit code`; `COMMANDS` lists them with the line
shown by `edgetrunc --help`. A command's module is imported, and its arguments declared, only
when that command is named, so `edgetrunc infer` never imports TensorFlow and `--help` stays
fast. Every command calls the Python API; this module turns what goes wrong into one line on
stderr: exit 2 for errors the user can cause (a library error that names a parameter names
its flag here), 1 for a failed check (parity, accuracy).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from edgetrunc._version import __version__
from edgetrunc.cli import _streams
from edgetrunc.errors import EdgetruncError, InputError

COMMANDS = {
    "train": "train a registered model on cover/stego pairs",
    "evaluate": "accuracy, AUC, P_E of a .keras, .tflite or .onnx model",
    "convert": "export to TFLite and ONNX with the truncation mapping checked",
    "parity": "prove converted models compute what the Keras model computes",
    "infer": "stego probability of images with a .tflite or .onnx model (no TensorFlow)",
    "run": "record an artifact's outputs on saved inputs, for parity elsewhere (no TensorFlow)",
    "bench": "latency and throughput of .tflite / .onnx artifacts (no TensorFlow)",
    "migrate": "turn a legacy model's truncations into Truncation layers, as .keras",
    "targets": "Vela (Ethos-U) and TFLite Micro verdicts on a full-integer .tflite",
}
_TENSORFLOW_COMMANDS = ("train", "convert", "parity")


def command_module(name: str):
    return importlib.import_module(f"edgetrunc.cli.{name}")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors printed on one harmless line (control characters escaped)."""

    def error(self, message):
        from edgetrunc._text import printable

        super().error(printable(message))


class _Commands(argparse._SubParsersAction):
    """The COMMAND argument: the named command's module declares its arguments just in time."""

    def __call__(self, parser, namespace, values, option_string=None):
        command = self.choices.get(values[0]) if values else None
        if command is not None and not getattr(command, "declared", False):
            module = command_module(values[0])
            command.description = module.DESCRIPTION
            module.add_arguments(command)
            command.declared = True
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgetrunc",
        description="Train, export, parity-check and run Keras models with Truncation "
        "(hard clip) layers on edge devices.",
        epilog="Exit codes: 0 success, 1 the check failed (parity, accuracy), 2 bad input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"edgetrunc {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or logs on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=_Commands)
    for name, summary in COMMANDS.items():
        sub.add_parser(name, help=summary)
    return parser


def _flags(parser, command: str) -> dict:
    """`{parameter: flag}` of the command's options (`max_pairs` -> `--max-pairs`,
    `frozen_bn_fraction` -> `--frozen-bn`): each option's `dest` is the parameter it sets."""
    from edgetrunc.cli._args import flags

    (commands,) = [a for a in parser._actions if isinstance(a, _Commands)]
    return flags(commands.choices[command])


def _quiet_tensorflow(args):
    """TensorFlow's logs off; commands that use it import it first, with its banner kept
    off stderr (oneDNN stays on, TensorFlow's default: 2-3x faster convolutions on x86)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    if args.command == "evaluate":
        from edgetrunc.runtime.formats import find

        keras_model = find(args.model, runnable=True) is None
    else:
        keras_model = False
    if args.command in _TENSORFLOW_COMMANDS or keras_model:
        from edgetrunc import _log

        try:
            _log.import_tensorflow_quietly()
        except ImportError:
            pass  # the command says what to install when it needs TensorFlow
    else:  # TensorFlow only if needed, late (migrate refuses lambdas without it): no banner
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _error_line(command: str, message) -> None:
    from edgetrunc._text import printable

    try:
        print(f"edgetrunc {command}: error: {printable(message)}", file=sys.stderr, flush=True)
    except OSError:  # stderr is gone too: nowhere left to say it
        pass


def _parse(parser, argv):
    try:
        return parser.parse_args(argv)
    except SystemExit:  # --help, --version or a usage error: already printed
        _streams.flush_stdout()
        raise


def main(argv=None) -> int:
    _streams.reopen_closed()
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _quiet_tensorflow(args)
    from edgetrunc import _log

    _log.set_quiet(args.quiet)
    _log.new_run()
    code = 0
    try:
        code = int(command_module(args.command).run(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError as exc:
        if _streams.stdout_reader_gone():  # `| head`: the reader has what it wanted
            _streams.drop_stdout()
            return code
        _error_line(args.command, f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror)
        return 2
    except InputError as exc:
        for line in exc.lines_for(_flags(parser, args.command)):
            _error_line(args.command, line)  # InputErrors: one error line per problem
        return exc.exit_code
    except EdgetruncError as exc:
        _error_line(args.command, exc)
        return exc.exit_code
    except MemoryError as exc:
        _error_line(args.command, f"out of memory ({str(exc).strip() or 'the inputs are too large'})")
        return 2
    except OSError as exc:  # the file system refused (disk full, permissions, read-only, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        _error_line(args.command, f"{where}{exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        print("edgetrunc: interrupted", file=sys.stderr)
        return 130
