"""Argument types and the options several commands share, each declared once.

A type turns one command-line string into a checked value or raises
`argparse.ArgumentTypeError`, which argparse prints as usage and one error line (exit 2).
Counts are bounded (a huge number is refused here, not deep inside numpy), thread counts
are bounded by the machine, seeds are what every random source accepts. The `add_*`
functions declare an option shared by several commands; each command gives its own help.
"""

from __future__ import annotations

import argparse
import os

MAX_COUNT = 2**31 - 1  # what a C int holds: larger counts never reach numpy or a backend
MAX_SEED = 2**32 - 1  # numpy's legacy seeding (and so Keras) takes 0 .. 2**32 - 1
THREADS_PER_CPU = 4


def positive_int(text, maximum: int = MAX_COUNT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to {maximum}; got {text!r}")
    return value


def count(maximum: int):
    """`positive_int` with its own upper bound (a number of samples, of runs)."""
    def parse(text):
        return positive_int(text, maximum)

    return parse


def max_threads() -> int:
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def _check_threads(value: int, text) -> int:
    limit = max_threads()
    if value > limit:
        raise argparse.ArgumentTypeError(
            f"expected at most {limit} threads ({THREADS_PER_CPU} per CPU, {os.cpu_count() or 1} "
            f"CPUs here); got {text!r}")
    return value


def threads(text) -> int:
    """A positive thread count, at most `THREADS_PER_CPU` per CPU of this machine."""
    return _check_threads(positive_int(text), text)


def thread_list(text) -> list:
    """Thread counts like `1,2`, each positive and bounded as `threads`."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    _check_threads(max(values), text)
    return values


def seed(text) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed; got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}; got {text!r}")
    return value


def payload(text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1]; got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"payload must be in (0, 1] bits per pixel; got {text}")
    return value


def choices_list(kind: str, allowed):
    """Comma-separated items, each one of `allowed` (e.g. precisions `fp32,int8`)."""
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in allowed]
        if bad:
            from edgetrunc._text import printable

            raise argparse.ArgumentTypeError(
                f"unknown {kind} {printable(', '.join(bad))}; expected any of {', '.join(allowed)}")
        return items

    return parse


def add_json(parser, help="print JSON on stdout") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_threads(parser, help="interpreter threads") -> None:
    parser.add_argument("--threads", type=threads, default=None, help=help)


def add_seed(parser, help="random seed (default: 0)") -> None:
    parser.add_argument("--seed", type=seed, default=0, help=help)


def add_payload(parser, help) -> None:
    parser.add_argument("--payload", type=payload, default=0.4, help=help)


def add_covers(parser, help) -> None:
    parser.add_argument("--covers", default="embedded", help=help)


def add_force(parser, help) -> None:
    parser.add_argument("--force", action="store_true", help=help)


def add_out(parser, help=None, **kwargs) -> None:
    parser.add_argument("--out", help=help, **kwargs)


def add_stego(parser, messages: bool = False) -> None:
    """`--embedding`, `--stego-cache`, `--workers` (and for training `--messages`)."""
    parser.add_argument("--embedding", default="lsbm", metavar="NAME",
                        help="stego embedding: lsbm (LSB matching), hill, suniward or wow "
                        "(content-adaptive, conseal; cached) (default: lsbm)")
    parser.add_argument("--stego-cache", default=None, metavar="DIR",
                        help="stego cache folder of the content-adaptive embeddings (default: "
                        "$XDG_CACHE_HOME/edgetrunc/stego or ~/.cache/edgetrunc/stego)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes that embed into the stego cache (default: every "
                        "usable core)")
    if messages:
        parser.add_argument("--messages", type=positive_int, default=4, metavar="K",
                            help="messages per training tile of a cached embedding, cycled "
                            "over the epochs (default: 4)")


def add_trust_lambda(parser, help="allow loading Lambda layers (this runs code stored in "
                     "the file)") -> None:
    parser.add_argument("--trust-lambda", action="store_true", help=help)


def add_custom_objects(parser) -> None:
    """`--custom-objects FILE.py`: the user's own code, run because the user names it."""
    parser.add_argument(
        "--custom-objects", metavar="FILE.py", default=None,
        help="a Python file of your own whose public functions and classes Keras may use by "
        "name when it loads the model, as keras.saving.load_model(custom_objects=...) does "
        "(custom layers, activations). The file is RUN (imported): give only code you trust. "
        "Without it, nothing named in a model file is imported")
