"""Every command's option defaults are written once, in the library: each option sets the
library parameter named like its `dest`, its default is that parameter's default, and
`--help` shows that value, so a default changed in the library shows on the command line."""

import importlib
import inspect

import pytest

from edgetrunc.cli import build_parser, command_module

# command -> the library callables whose parameters its options set, and its own options
LIBRARY = {
    "train": (["edgetrunc.train.config:TrainConfig", "edgetrunc.cli.train:QatOptions"], set()),
    "parity": (["edgetrunc.parity.check:check_parity"], {"json", "html"}),
    "evaluate": (["edgetrunc.evaluate:evaluate"], {"json"}),
    "convert": (["edgetrunc.export:convert"], {"json", "pack_front_end"}),  # a no-op kept
    "migrate": (["edgetrunc.migrate:migrate"], {"json"}),
    "run": (["edgetrunc.runtime.recorded:record_outputs"], {"json"}),
    "bench": (["edgetrunc.runtime.bench:bench_artifacts", "edgetrunc.runtime:RunnerOptions"],
              {"json", "profile"}),
    "infer": (["edgetrunc.runtime:open_runner"], {"json"}),
    "targets": (["edgetrunc.cli.targets:targets_report"], {"json"}),
}
APPEND_LISTS = {("train", "model_kwargs")}  # argparse appends to [], the library takes None


def _declared(command):
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    command_module(command).add_arguments(sub.choices[command])
    return sub.choices[command]


def _options(parser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _parameters(command) -> dict:
    """`{name: inspect.Parameter}` of the command's library callables, the first one's first."""
    parameters = {}
    for target in reversed(LIBRARY[command][0]):
        module, name = target.split(":")
        parameters.update(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
    return parameters


def _shown(default) -> str | None:
    """How `--help` writes a default, None where it writes none (None, a switch, no items)."""
    if default is None or isinstance(default, bool) or default in ([], ()):
        return None
    return ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


@pytest.mark.parametrize("command", sorted(LIBRARY))
def test_option_defaults_are_the_library_defaults(command):
    parameters = _parameters(command)
    own = LIBRARY[command][1]
    options = _options(_declared(command))
    assert options
    for action in options:
        if action.dest in own:
            continue
        assert action.dest in parameters, (command, action.dest, action.option_strings)
        default = parameters[action.dest].default
        if action.required:  # `--out` of run and migrate: a parameter without a default
            assert default is inspect.Parameter.empty, (command, action.dest)
            continue
        assert default is not inspect.Parameter.empty, (command, action.dest)
        if (command, action.dest) in APPEND_LISTS:
            assert action.default == [] and default is None
        else:
            assert action.default == default and type(action.default) is type(default), \
                (command, action.dest, action.default, default)


@pytest.mark.parametrize("command", sorted(LIBRARY))
def test_help_shows_each_library_default(command):
    parameters = _parameters(command)
    parser = _declared(command)
    text = "".join(parser.format_help().split())  # argparse wraps lines, even inside a-b
    shown = 0
    for action in _options(parser):
        if action.dest in LIBRARY[command][1] or action.required:
            continue
        expected = _shown(parameters[action.dest].default)
        if expected is not None:
            assert "".join(f"(default: {expected})".split()) in text, (command, action.dest)
            shown += 1
    assert shown >= (0 if command in ("infer", "migrate") else 1)


def test_a_default_changed_in_the_library_shows_in_help(monkeypatch):
    from edgetrunc.runtime.bench import bench_artifacts

    names = [name for name, p in inspect.signature(bench_artifacts).parameters.items()
             if p.default is not inspect.Parameter.empty]
    defaults = dict(zip(names, bench_artifacts.__defaults__))
    defaults.update(runs=77, threads=(2, 4))
    monkeypatch.setattr(bench_artifacts, "__defaults__", tuple(defaults.values()))
    parser = _declared("bench")
    args = parser.parse_args(["a.tflite"])
    assert (args.runs, args.threads) == (77, (2, 4))
    text = " ".join(parser.format_help().split())
    assert "timed runs (default: 77)" in text and "e.g. 1,2 (default: 2,4)" in text


def test_switches_default_off_and_negated_switches_on():
    """A `store_true` option is off unless given, as its parameter; `--no-probes`, `--no-speed`,
    `--no-xnnpack` set a parameter that is on by default."""
    for command in LIBRARY:
        for action in _options(_declared(command)):
            if type(action).__name__ == "_StoreTrueAction":
                assert action.default is False, (command, action.dest)
            if type(action).__name__ == "_StoreFalseAction":
                assert action.default is True and action.option_strings[0].startswith("--no-"), \
                    (command, action.dest)


def test_parity_report_names_parameters_and_the_command_line_shows_flags():
    """The report's notes name parameters (`strict_nan=True`, as library errors do); the
    terminal table that `edgetrunc parity` prints shows them as flags."""
    from types import SimpleNamespace

    from edgetrunc.cli import parity
    from edgetrunc.cli._args import flags_of
    from edgetrunc.parity.report import html_report, terminal_report
    from edgetrunc.parity.results import ParityReport

    nan_probe = SimpleNamespace(layer="trunc", backend="tflite-builtin", precision="fp32",
                                error=None, value_deviations=0, nan_deviations=1, lower=-3.0,
                                upper=3.0, values=[{"input": "NaN", "got": 3.0, "status": "nan"}])
    inputs = SimpleNamespace(x=[], describe=lambda: {"kind": "mix", "composition": {}, "seed": 0})
    report = ParityReport(reference={"path": "m.keras", "samples_per_second": 1.0}, inputs=inputs,
                          artifacts=[], probes=[], strict_nan=True, per_layer=False, seconds=0.0,
                          warnings=["m.tflite: layer x diverges (strict_layers=True makes it a "
                                    "failure); use inputs=covers"])
    report.probes = [nan_probe]
    report.to_dict = lambda: {"samples": 0, "inputs": inputs.describe()}
    (failure,) = report.probe_failures
    assert failure.endswith("NaN not propagated (strict_nan=True)")
    plain = terminal_report(report)
    assert "(strict_nan=True)" in plain and "use inputs=covers" in plain
    shown = terminal_report(report, flags_of(parity.add_arguments))
    assert "FAIL probe trunc [tflite-builtin fp32]: NaN not propagated (--strict-nan)" in shown
    assert "(--strict-layers makes it a failure); use --inputs covers" in shown
    assert "=True" not in shown and "inputs=" not in shown
    page = html_report(report, flags_of(parity.add_arguments))
    assert "NaN not propagated (--strict-nan)" in page and "use --inputs covers" in page
    assert "(strict_nan=True)" in html_report(report)
