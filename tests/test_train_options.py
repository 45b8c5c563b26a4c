"""`edgetrunc train`'s options are `TrainConfig`'s fields: each setting has exactly one flag, one
default, and a library error naming the setting shows that flag on the command line."""

import dataclasses

import pytest

from edgetrunc import train as train_package
from edgetrunc._options import default_of, flag_names, options
from edgetrunc.cli import build_parser, main
from edgetrunc.cli.train import QatOptions
from edgetrunc.errors import InputError
from edgetrunc.train import TrainConfig, train
from error_lines import assert_one_line_error

LIBRARY_ONLY = {"fractions", "augment", "command"}


def _train_actions():
    parser = build_parser()
    parser.parse_args(["train"])  # declares the command's options
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return [a for a in sub.choices["train"]._actions if a.option_strings and a.dest != "help"]


def test_every_setting_has_exactly_one_flag_with_its_default():
    actions = _train_actions()
    by_dest = {}
    for action in actions:
        by_dest.setdefault(action.dest, []).append(action)
    flags = {**flag_names(TrainConfig), **flag_names(QatOptions)}
    assert sorted(by_dest) == sorted(flags)  # no option without a field, no field without one
    for dest, found in by_dest.items():
        assert len(found) == 1 and found[0].option_strings == [flags[dest]], (dest, found)
    all_flags = [flag for action in actions for flag in action.option_strings]
    assert len(all_flags) == len(set(all_flags))
    init_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.init}
    assert set(flag_names(TrainConfig)) == init_fields - LIBRARY_ONLY
    for field, metadata in options(TrainConfig):
        if field.name in by_dest and field.name != "model_kwargs":  # --model-arg appends to []
            assert by_dest[field.name][0].default == default_of(field), field.name
    assert flag_names(TrainConfig)["frozen_bn_fraction"] == "--frozen-bn"
    assert flag_names(TrainConfig)["model_kwargs"] == "--model-arg"


def test_parsed_options_are_the_config_defaults(tmp_path):
    from edgetrunc._options import from_namespace

    parser = build_parser()
    args = parser.parse_args(["train"])
    config = from_namespace(TrainConfig, args)
    assert config == TrainConfig()  # the command's defaults are the library's defaults


@pytest.mark.parametrize("argv, fragments", [
    (["--frozen-bn", "1.5"], ["edgetrunc train: error: --frozen-bn: expected a fraction in [0, 1)",
                              "got 1.5"]),
    (["--model-arg", "width"], ["edgetrunc train: error: --model-arg: expected KEY=VALUE"]),
    (["--time-budget", "0"], ["edgetrunc train: error: --time-budget: expected minutes > 0"]),
    (["--shuffle-buffer", "9000"], ["edgetrunc train: error: --shuffle-buffer: expected 1 to"]),
])
def test_config_error_names_the_flag(tmp_path, capsys, argv, fragments):
    out = tmp_path / "m.keras"
    rc = main(["train", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, *fragments)
    assert err.startswith(fragments[0]) and not out.exists()


def test_train_takes_keywords_or_a_config(monkeypatch, tmp_path):
    monkeypatch.setattr(train_package, "run_training", lambda config, started: config)
    out = str(tmp_path / "m.keras")
    config = train(epochs=3, frozen_bn_fraction=0.25, model_kwargs={"width": 2}, out=out)
    assert isinstance(config, TrainConfig)
    assert (config.epochs, config.frozen_bn_fraction, config.model_kwargs) == (3, 0.25, {"width": 2})
    replaced = train(config, epochs=5)
    assert replaced.epochs == 5 and replaced.frozen_bn_fraction == 0.25 and replaced.out == out
    assert train(config) is config
    with pytest.raises(InputError, match="^frozen_bn_fraction: ") as refused:
        train(config, frozen_bn_fraction=1.0)
    assert refused.value.param == "frozen_bn_fraction"
    with pytest.raises(TypeError):
        train(frozen_bn=0.5)  # the library takes field names only


def test_train_docstring_lists_every_setting_once():
    doc = train.__doc__
    for field in dataclasses.fields(TrainConfig):
        if field.init:
            assert doc.count(f"\n        {field.name}: ") == 1, field.name
    assert "--frozen-bn" in doc and "default 'models/tlunet.keras'" in doc


def _command_actions(command):
    from edgetrunc.cli import command_module

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    command_module(command).add_arguments(sub.choices[command])
    return [a for a in sub.choices[command]._actions if a.dest != "help"]


@pytest.mark.parametrize("command, function, cli_only", [
    ("evaluate", "edgetrunc.evaluate:evaluate", {"model", "json"}),
    ("parity", "edgetrunc.parity.check:check_parity", {"json", "html"}),
    ("convert", "edgetrunc.export:convert", {"model", "json", "pack_front_end"}),  # a no-op kept
])
def test_command_options_are_the_library_parameters(command, function, cli_only):
    """Each option's dest is the parameter it sets, so the call passes them by name
    (`_args.keywords`) and a library error naming a parameter shows its flag."""
    import importlib
    import inspect

    module, name = function.split(":")
    parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    for action in _command_actions(command):
        assert action.dest in parameters or action.dest in cli_only, (command, action.dest)
        default = parameters[action.dest].default if action.dest in parameters else None
        if action.dest in parameters and default is not inspect.Parameter.empty:
            assert action.default == default or list(action.default or []) == list(default or []), \
                (command, action.dest, action.default, default)
