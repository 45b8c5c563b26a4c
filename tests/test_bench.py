"""`edgetrunc bench` (JSON schema, table, errors), its timing helpers, and `scripts.benchmarks`."""

import importlib
import json
import shutil
import sys

import numpy as np
import pytest

from edgetrunc.cli import main
from edgetrunc.errors import InputError
from edgetrunc.runtime.bench import (RESULT_KEYS, bench_artifacts, latency_summary,
                                     time_interleaved)
from runtime_artifacts import ROOT, detector_artifacts


def _bench_section(name="runtime"):
    """A section module of the benchmark package `scripts.benchmarks` (from the repository)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"scripts.benchmarks.{name}")


def test_latency_summary_from_hand_written_times():
    summary = latency_summary([4.0, 1.0, 3.0, 2.0, 10.0], batch=2)
    assert summary["min_ms"] == 1.0 and summary["p50_ms"] == 3.0
    assert summary["p90_ms"] == pytest.approx(7.6) and summary["p99_ms"] == pytest.approx(9.76)
    assert summary["mean_ms"] == 4.0 and summary["throughput_ips"] == 500.0


def test_time_interleaved_runs_every_function_in_rotating_order():
    calls = []
    functions = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = time_interleaved(functions, runs=4, warmup=2, desc="t")
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert calls[:6] == ["a", "b", "c", "b", "c", "a"]
    assert len(calls) == 18


@pytest.mark.slow
def test_bench_json_schema(block, capsys):
    argv = ["bench", str(block["fp32"]), str(block["onnx"]), "--threads", "1,2", "--runs", "3",
            "--warmup", "1", "--batch", "2", "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [(r["artifact"], r["threads"]) for r in results] == [
        (str(block["fp32"]), 1), (str(block["fp32"]), 2), (str(block["onnx"]), 1), (str(block["onnx"]), 2)]
    for r in results:
        assert set(RESULT_KEYS) <= set(r)
        assert r["batch"] == 2 and r["runs"] == 3
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_ips"] > 0 and r["peak_rss_mb"] > 10
        assert r["format"] in ("tflite", "onnx") and r["precision"] == "fp32"
    assert [r["delegate_partitions"] for r in results] == [1, 1, None, None]


def test_bench_without_xnnpack_has_no_delegate_partitions(block, capsys):
    argv = ["bench", str(block["int8"]), str(block["onnx"]), "--no-xnnpack", "--runs", "2", "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["delegate_partitions"] for r in results] == [0, None]


def test_bench_table_on_stdout_progress_on_stderr(block, capsys):
    assert main(["bench", str(block["int8"]), "--runs", "2", "--warmup", "0"]) == 0
    captured = capsys.readouterr()
    header, rule, row = captured.out.strip().splitlines()
    assert header.split()[:3] == ["artifact", "precision", "threads"]
    assert "int8" in row and set(rule) <= {"-", " "}
    assert "loading" in captured.err


def test_bench_bad_artifacts_exit_2_with_one_line(tmp_path, block, capsys):
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\x00" * 64)
    assert main(["bench", str(block["fp32"]), str(corrupt), "--runs", "2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == [f"edgetrunc bench: error: {corrupt}: not a valid TFLite model "
                   "(The model is not a valid Flatbuffer buffer)"]
    with pytest.raises(InputError, match="no such .onnx file"):
        bench_artifacts([tmp_path / "missing.onnx"], runs=1)
    with pytest.raises(InputError, match="^warmup: expected 0 or more") as refused:
        bench_artifacts([block["fp32"]], runs=1, warmup=-1)
    assert refused.value.param == "warmup"  # the library names the parameter; the CLI, its flag
    assert main(["bench", str(block["fp32"]), "--warmup", "-1"]) == 2
    assert "error: --warmup: expected 0 or more" in capsys.readouterr().err


def test_flop_count_of_a_hand_checked_model():
    import keras

    from edgetrunc.models.flops import count_flops

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, (3, 3), padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.AveragePooling2D((2, 2), name="pool")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, name="dense")(x)
    rows = {r["layer"]: r for r in count_flops(keras.Model(inputs, outputs))}
    assert rows["conv"]["macs"] == 8 * 8 * 4 * 9 and rows["conv"]["flops"] == 2 * 8 * 8 * 4 * 9
    assert rows["pool"]["flops"] == 4 * 4 * 4 * 4
    assert rows["bn"]["flops"] == 2 * 4 * 4 * 4
    assert rows["gap"]["flops"] == 4 * 4 * 4
    assert rows["dense"]["macs"] == 8 and rows["dense"]["flops"] == 16 + 2


def test_tlunet_flops_match_the_documented_figure():
    from edgetrunc.models import create
    from edgetrunc.models.flops import count_flops

    rows = count_flops(create("tlunet"))
    macs = sum(r["macs"] for r in rows)
    assert 71e6 < macs < 73e6
    assert rows[0]["layer"] == "front_end" and rows[0]["macs"] == 256 * 256 * 25


@pytest.mark.slow
def test_bench_script_writes_its_sections_and_keeps_the_others(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- BEGIN training -->\nkept as is\n<!-- END training -->\n")
    models = tmp_path / "models"
    models.mkdir()
    detector = detector_artifacts()
    shutil.copy(detector["tflite"], models / "tlunet_fp32.tflite")
    shutil.copy(detector["onnx"], models / "tlunet_fp32.onnx")
    assert _bench_section().main(["--quick", "--out", str(out), "--models", str(models)]) == 0
    text = out.read_text()
    assert "<!-- BEGIN training -->\nkept as is\n<!-- END training -->" in text
    starts = [text.index(f"<!-- BEGIN {section} -->")
              for section in ("machine", "runtime", "truncation-variants", "flops", "profile",
                              "training")]
    assert starts == sorted(starts)
    profile = text.split("<!-- BEGIN profile -->")[1].split("<!-- END profile -->")[0]
    assert "**tflite fp32**:" in profile and "**onnx fp32**:" in profile
    assert "| CONV_2D |" in profile and "| Conv |" in profile
    assert "| TFLite fp32 | 1 |" in text and "| ONNX Runtime fp32 | 2 |" in text
    assert "not found, rows skipped: tflite fp16, tflite int8, onnx int8" in text
    variant_rows = [line for line in text.splitlines() if line.startswith("| seed answer 1")]
    assert variant_rows and variant_rows[0].rstrip(" |").endswith("4 / 4 / 4")
    assert np.isfinite(float(text.split("multiply-adds: **")[1].split(" M")[0]))


def test_one_benchmark_entry_point_lists_and_imports_every_section(capsys):
    package = _bench_section("__main__")
    assert package.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["runtime", "export", "parity", "training", "streaming", "models", "integer",
                      "per-layer", "assert-parity", "int8-onnx", "convert"]
    sections = importlib.import_module("scripts.benchmarks").SECTIONS
    for name in listed:
        assert callable(importlib.import_module(sections[name].module).main)
    with pytest.raises(SystemExit):
        package.main(["nope"])
    assert "unknown section nope" in capsys.readouterr().err
    makefile = (ROOT / "Makefile").read_text()
    assert "$(PY) -m scripts.benchmarks\n" in makefile.split("\nbench:")[1]


def test_peak_rss_of_a_worker_is_its_own_not_the_parents():
    import subprocess
    import sys

    ballast = np.ones((300, 1024, 1024), np.uint8)  # 300 MB held by this process
    code = "from edgetrunc.runtime.bench import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 5 < float(out.stdout) < 200
    del ballast


def test_bench_profile_json_rows_sum_to_the_total(block, capsys):
    """`bench --profile --json`: per-op rows of each format whose times sum to the total."""
    argv = ["bench", str(block["fp32"]), str(block["onnx"]), "--runs", "3", "--warmup", "1",
            "--profile", "--json"]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["results"]) == 2
    profiles = {p["format"]: p for p in document["profiles"]}
    assert set(profiles) == {"tflite", "onnx"}
    for profile in profiles.values():
        assert profile["threads"] == 1 and profile["runs"] == 3 and profile["method"]
        ops = profile["ops"]
        assert ops and all(set(r) >= {"index", "name", "type", "layer", "ms", "share", "flops",
                                      "gflops"} for r in ops)
        assert all(r["ms"] >= 0 for r in ops) and profile["total_ms"] > 0
        assert sum(r["ms"] for r in ops) == pytest.approx(profile["total_ms"], rel=0.02, abs=0.01)
        assert sum(r["ms"] for r in profile["layers"]) == pytest.approx(profile["total_ms"],
                                                                         rel=0.02, abs=0.01)
        convs = [r for r in ops if r["type"] in ("CONV_2D", "Conv")]
        # the seed block's convolution carries its own FLOPs; other Conv rows (ONNX Runtime's
        # NCHWc transformer turns the batch norm's Mul into a 1x1 depthwise Conv on AVX2) count
        assert [r["flops"] for r in convs if r["layer"] == "conv"] == [2 * 256 * 256 * 8 * 25]
        assert all(r["flops"] > 0 for r in convs)
        assert any("conv" in (r["layer"] or "") for r in ops)
    assert profiles["tflite"]["ops"][0]["flops"] == 2 * 256 * 256 * 8 * 25


def test_bench_profile_table(block, capsys):
    assert main(["bench", str(block["fp32"]), "--runs", "2", "--warmup", "0", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "cumulative" in out and "GFLOP/s" in out and "CONV_2D" in out


def test_layer_names_from_op_names():
    from edgetrunc.runtime.layer_names import layer_of

    assert layer_of(["tlunet_1/group1_conv_1/convolution2"]) == "group1_conv"
    assert layer_of(["group1_truncation/Clip"]) == "group1_truncation"
    assert layer_of(["m_1/group2_bn_1/add;m_1/group2_conv_1/conv"],
                    ["group2_conv", "group2_bn"]) == "group2_conv+group2_bn"
    assert layer_of(["Conv__8"]) is None


def test_first_layer_of_fused_marked_and_suffixed_names():
    from edgetrunc.runtime.layer_names import SATURATION_MARK, first_layer, layers_in

    assert layers_in(f"m_1/conv_1/conv;{SATURATION_MARK}/tlu") == ["conv", "tlu"]
    assert first_layer(["Conv__8", "m_1/conv_1_1/BiasAdd:0"], ["conv_1"]) == "conv_1"
    assert first_layer(["group1_truncation/QuantizeLinear"]) == "group1_truncation"
    assert first_layer(["serving_default_input:0"]) is None


def test_onnx_flops_of_layout_changes_and_depthwise_convs():
    """ONNX Runtime's NCHWc transformer inserts ReorderInput/ReorderOutput (layout changes, no
    arithmetic) and turns a per-channel Mul into a 1x1 depthwise Conv (one multiply-add per
    output, 2 FLOPs like the Keras count of a batch norm)."""
    from edgetrunc.runtime.profile import _onnx_flops

    def event(op, ins, out):
        return {"op_name": op, "input_type_shape": [{"float": s} for s in ins],
                "output_type_shape": [{"float": out}]}

    assert _onnx_flops(event("ReorderInput", [[1, 8, 126, 126]], [1, 8, 126, 126])) == 0
    assert _onnx_flops(event("ReorderOutput", [[1, 8, 126, 126]], [1, 8, 126, 126])) == 0
    assert _onnx_flops(event("Conv", [[1, 8, 126, 126], [8, 1, 1, 1]], [1, 8, 126, 126])) == (
        2 * 126 * 126 * 8)
    assert _onnx_flops(event("Conv", [[1, 1, 256, 256], [8, 1, 5, 5]], [1, 8, 256, 256])) == (
        2 * 256 * 256 * 8 * 25)


def test_ordering_the_sections_keeps_the_text_between_them(tmp_path):
    order_sections = _bench_section("_markdown").order_sections
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- BEGIN training -->\nt\n<!-- END training -->\n\n"
                   "## Written by hand\n\nprose\n\n<!-- BEGIN machine -->\nm\n<!-- END machine -->\n")
    order_sections(out)
    text = out.read_text()
    assert text.index("BEGIN machine") < text.index("BEGIN training") < text.index("prose")
    assert "## Written by hand\n\nprose\n" in text
