"""Argument types and the options several commands share, each declared once.

A type turns one command-line string into a checked value or raises
`argparse.ArgumentTypeError`, which argparse prints as usage and one error line (exit 2).
Counts are bounded (a huge number is refused here, not deep inside numpy), thread counts
are bounded by the machine, seeds are what every random source accepts. The `add_*`
functions declare an option shared by several commands; each command gives its own help.

Each default is written once, in the library: an option that sets a library parameter is
declared with `add_parameter(parser, function, name, help)`, which takes its default from
`function`'s signature (`default_of`) and renders "(default: X)" from that value
(`with_default`); a command with many settings declares them from its settings dataclass
(`add_options`). Either way the option's `dest` is the parameter's name, so the call passes
the parsed options by name (`keywords`) and an error naming a parameter shows its flag
(`flags`).
"""

from __future__ import annotations

import argparse
import os

from edgetrunc._options import MAX_COUNT, MAX_SEED, payload, positive_int, seed  # noqa: F401
from edgetrunc._options import flag_of, options

THREADS_PER_CPU = 4
_TOP_LEVEL_DESTS = {"command", "quiet"}  # `edgetrunc` itself: never a library argument


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


def default_of(function, name: str):
    """The default of parameter `name` of `function` (or of a class's constructor, as of a
    settings dataclass): the one place a command's option takes its default from."""
    import inspect

    default = inspect.signature(function).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{function.__qualname__}: parameter {name!r} has no default")
    return default


def with_default(help: str, default) -> str:
    """`help` ending in "(default: X)", X rendered from `default` (a sequence as `a,b`);
    nothing added for None, a switch (bool) or an empty sequence."""
    if default is None or isinstance(default, bool) or default == [] or default == ():
        return help
    text = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    return f"{help} (default: {text.replace('%', '%%')})".strip()


def add_parameter(parser, function, name: str, help: str = "", flag: str | None = None,
                  **kwargs) -> None:
    """An option that sets `function`'s parameter `name`: its `dest` is the name (so
    `keywords` passes it, and an error naming the parameter shows the flag), its default the
    parameter's own, shown at the end of its help. `flag` defaults to `--` and the name with
    dashes; other keywords go to `add_argument` (`type`, `action`, `metavar`, ...)."""
    default = default_of(function, name)
    parser.add_argument(flag or "--" + name.replace("_", "-"), dest=name, default=default,
                        help=with_default(help, default), **kwargs)


def add_threads(parser, function, help="interpreter threads", **kwargs) -> None:
    add_parameter(parser, function, "threads", help, type=threads, **kwargs)


def add_seed(parser, function, help="random seed") -> None:
    add_parameter(parser, function, "seed", help, type=seed)


def add_payload(parser, function, help) -> None:
    add_parameter(parser, function, "payload", help, type=payload)


def add_covers(parser, function, help) -> None:
    add_parameter(parser, function, "covers", help)


def add_force(parser, function, help) -> None:
    add_parameter(parser, function, "force", help, action="store_true")


def add_out(parser, help=None, **kwargs) -> None:
    parser.add_argument("--out", help=help, **kwargs)


def add_options(parser, cls, exclude=()) -> None:
    """An option for every command-line field of the settings dataclass `cls` (declared with
    `edgetrunc._options.option`), its `dest` the field's name, except those in `exclude`."""
    for field, metadata in options(cls):
        flag = flag_of(field.name, metadata)
        if flag and field.name not in exclude:
            _add_option(parser, field.name, flag, metadata)


def flags(parser) -> dict:
    """`{parameter: flag}` of a command's options (`max_pairs` -> `--max-pairs`,
    `frozen_bn_fraction` -> `--frozen-bn`): each option's `dest` is the parameter it sets."""
    return {action.dest: max(action.option_strings, key=len) for action in parser._actions
            if action.option_strings and action.dest != "help"}


def flags_of(add_arguments) -> dict:
    """`flags` of the options that a command's `add_arguments` declares."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return flags(parser)


def keywords(function, args, exclude=()) -> dict:
    """The keyword arguments of `function` that the parsed `args` hold: every parameter named
    like an option's `dest` (a command's options are named as the library's parameters, so
    the call never re-lists them, and an error naming a parameter shows its flag)."""
    import inspect

    names = set(inspect.signature(function).parameters) - set(exclude) - _TOP_LEVEL_DESTS
    return {name: value for name, value in vars(args).items() if name in names}


def _add_option(parser, name: str, flag: str, metadata: dict) -> None:
    default = metadata["cli_default"]
    kwargs = {"dest": name, "default": default, "help": with_default(metadata["help"], default)}
    for key in ("type", "choices", "metavar", "action"):
        if metadata[key] is not None:
            kwargs[key] = metadata[key]
    parser.add_argument(flag, **kwargs)


def add_stego(parser, messages: bool = False) -> None:
    """`--embedding`, `--stego-cache`, `--workers` (and for training `--messages`), from
    the stego parameters' one declaration (`data.stego_cache.STEGO_OPTIONS`)."""
    from edgetrunc.data.stego_cache import STEGO_OPTIONS, stego_option

    for name in STEGO_OPTIONS:
        if name != "messages" or messages:
            metadata = stego_option(name).metadata["option"]
            _add_option(parser, name, flag_of(name, metadata), metadata)


def add_trust_lambda(parser, function, help="allow loading Lambda layers (this runs code "
                     "stored in the file)") -> None:
    add_parameter(parser, function, "trust_lambda", help, action="store_true")


def add_custom_objects(parser, function) -> None:
    """`--custom-objects FILE.py`: the user's own code, run because the user names it."""
    add_parameter(
        parser, function, "custom_objects", metavar="FILE.py",
        help="a Python file of your own whose public functions and classes Keras may use by "
        "name when it loads the model, as keras.saving.load_model(custom_objects=...) does "
        "(custom layers, activations). The file is RUN (imported): give only code you trust. "
        "Without it, nothing named in a model file is imported")
