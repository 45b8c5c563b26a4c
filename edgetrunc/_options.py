"""Settings written once: a dataclass field carries its default, help, flag and type.

A settings dataclass (`TrainConfig`, ...) declares each setting with `option(...)`: the
default, the help text, the command-line flag where its spelling differs from the field's
name (`frozen_bn_fraction` is `--frozen-bn`), and how the flag's text is read (`type`,
`choices`, `metavar`, `action`). The command line declares its options from these fields
(`edgetrunc.cli._args.add_options`), with each option's `dest` the field's name, so a library
error that names a parameter shows its flag (`flag_names`). A field made with
`option(..., flag=None)` is a library-only setting. The argument types that turn a flag's
text into a checked value (`positive_int`, `seed`, `payload`) live here, beside the fields
that name them; they raise `argparse.ArgumentTypeError`, which argparse prints as one line.
"""

from __future__ import annotations

import argparse
import dataclasses

MAX_COUNT = 2**31 - 1  # what a C int holds: larger counts never reach numpy or a backend
MAX_SEED = 2**32 - 1  # numpy's legacy seeding (and so Keras) takes 0 .. 2**32 - 1
_DERIVED = object()  # the default flag: `--` and the field's name with dashes


def option(default=None, help: str = "", *, flag=_DERIVED, type=None, choices=None,
           metavar=None, action=None, cli_default=_DERIVED):
    """A dataclass field with its command-line metadata (see the module docstring).

    `flag=None` keeps the setting off the command line; `cli_default` is the flag's own
    default where argparse needs another one (`[]` for an `append` action).
    """
    metadata = {"help": help, "flag": flag, "type": type, "choices": choices,
                "metavar": metavar, "action": action,
                "cli_default": default if cli_default is _DERIVED else cli_default}
    return dataclasses.field(default=default, metadata={"option": metadata})


def options(cls) -> list:
    """The fields of `cls` declared with `option(...)`, each `(field, metadata)`, in order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls)
            if f.init and "option" in f.metadata]


def flag_of(name: str, metadata) -> str | None:
    """The flag of setting `name`: its own, or `--` and the name with dashes; None for a
    library-only setting."""
    flag = metadata["flag"]
    return "--" + name.replace("_", "-") if flag is _DERIVED else flag


def flag_names(cls) -> dict:
    """`{field name: flag}` of every command-line setting of `cls`: the one name map."""
    return {f.name: flag_of(f.name, meta) for f, meta in options(cls) if flag_of(f.name, meta)}


def default_of(field):
    """A field's default value (a fresh one for a default factory)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def from_namespace(cls, namespace, **extra):
    """`cls(...)` from the attributes of `namespace` named like its command-line fields."""
    values = {name: getattr(namespace, name) for name in flag_names(cls) if hasattr(namespace, name)}
    return cls(**values, **extra)


def _parsed(text, cast, expected: str):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None


def positive_int(text, maximum: int = MAX_COUNT) -> int:
    value = _parsed(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to {maximum}; got {text!r}")
    return value


def seed(text) -> int:
    value = _parsed(text, int, "an integer seed")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}; got {text!r}")
    return value


def payload(text) -> float:
    value = _parsed(text, float, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"payload must be in (0, 1] bits per pixel; got {text}")
    return value
