"""Every output of a run against every other output and input, before anything is created
(docs/SECURITY.md, "Outputs"), and migrate's hostile archives and output paths: one line,
exit 2, nothing left behind (no report, no cache folder, no temporary folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgetrunc.errors import InputError
from error_lines import assert_one_line_error

MODELS = Path(__file__).resolve().parent.parent / "models"


# every output against every other output and input, before anything is created ------------

@pytest.mark.parametrize("flags, needles", [
    (["--json", "S", "--html", "S"], ["--html", "same path as --json"]),
    (["--save-inputs", "S.npz", "--json", "S.npz"], ["--save-inputs", "same path as --json"]),
    (["--stego-cache", "R.json", "--json", "R.json", "--embedding", "hill"], ["--stego-cache"]),
    (["--stego-cache", "cache", "--json", "cache/r.json", "--embedding", "hill"],
     ["--json", "inside the --stego-cache folder"]),
    (["--json", "link.json", "--html", "S.html"], ["--json", "the same path as", "--html"]),
    (["--json", "loop.json"], ["--json", "symbolic link loop"]),
    (["--stego-cache", "MODELS", "--embedding", "hill"], ["--stego-cache", "overlaps the input"]),
])
def test_parity_outputs_that_collide_are_refused_before_anything_is_made(cli, tmp_path, monkeypatch,
                                                                         flags, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.json").symlink_to("S.html")
    (tmp_path / "loop.json").symlink_to("loop.json")
    flags = [str(MODELS) if flag == "MODELS" else flag for flag in flags]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli("parity", MODELS / "tlunet.keras", MODELS / "tlunet_fp32.tflite", *flags)
    assert_one_line_error(code, err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no cache folder, no report


def test_library_parity_checks_its_outputs_before_the_stego_cache_is_made(tmp_path):
    from edgetrunc.parity.check import check_parity

    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="inside the stego_cache folder") as error:
        check_parity(MODELS / "tlunet.keras", [MODELS / "tlunet_fp32.tflite"],
                     save_inputs=cache / "x.npz", stego_cache=cache, embedding="hill")
    assert error.value.param == "save_inputs" and not cache.exists()


def test_check_run_paths_compares_inodes_and_folders(tmp_path):
    from edgetrunc._io import check_run_paths

    (tmp_path / "a.json").write_text("{}")
    os.link(tmp_path / "a.json", tmp_path / "b.json")
    with pytest.raises(InputError, match="same path as json") as error:
        check_run_paths({"json": tmp_path / "a.json", "html": tmp_path / "b.json"})
    assert error.value.param == "html"
    with pytest.raises(InputError, match="refusing to overwrite an input file"):
        check_run_paths({"out": tmp_path / "b.json"}, {"model": tmp_path / "a.json"})
    with pytest.raises(InputError, match="overlaps the input covers"):
        check_run_paths({"stego_cache": tmp_path / "c"}, {"covers": tmp_path}, folders=("stego_cache",))
    assert check_run_paths({"json": "-", "html": None, "out": tmp_path / "new.json"},
                           {"covers": tmp_path}) == {"out": tmp_path / "new.json"}


# migrate: hostile archives and output paths -----------------------------------------------

def _archive_with(tmp_path: Path, extra: dict) -> Path:
    import zipfile

    path = tmp_path / "odd.keras"
    with zipfile.ZipFile(MODELS / "tlunet.keras") as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
        for name, data in extra.items():
            target.writestr(name, data)
    return path


@pytest.mark.parametrize("extra", [{"config.json/": b""}, {"config.json/x": b"{}"},
                                   {"metadata.json/": b""}])
def test_migrate_refuses_an_archive_member_that_makes_a_file_a_folder(cli, tmp_path, monkeypatch,
                                                                    extra):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    code, _, err = cli("migrate", _archive_with(tmp_path, extra), "--out", tmp_path / "new.keras")
    assert_one_line_error(code, err, "odd.keras", "a folder")
    assert list(scratch.iterdir()) == [] and not (tmp_path / "new.keras").exists()


def test_migrate_out_on_a_symlink_loop_is_named_a_loop(cli, tmp_path):
    (tmp_path / "a.keras").symlink_to("b.keras")
    (tmp_path / "b.keras").symlink_to("a.keras")
    code, _, err = cli("migrate", MODELS / "tlunet.keras", "--out", tmp_path / "a.keras")
    assert_one_line_error(code, err, "a.keras", "symbolic link loop")
    assert "broken" not in err


def test_train_and_evaluate_check_their_outputs_before_the_stego_cache_is_made(tmp_path):
    from edgetrunc.evaluate import evaluate
    from edgetrunc.train.config import TrainConfig

    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="inside the stego_cache folder") as error:
        TrainConfig(out=cache / "m.keras", stego_cache=cache, embedding="hill")
    assert error.value.param == "out" and not cache.exists()
    with pytest.raises(InputError, match="same path as record"):
        TrainConfig(out=tmp_path / "m.keras", stego_cache=tmp_path / "m.training.json",
                    embedding="hill")
    covers = tmp_path / "covers"
    covers.mkdir()
    with pytest.raises(InputError, match="overlaps the input covers") as error:
        evaluate(MODELS / "tlunet_fp32.tflite", covers=covers, stego_cache=covers / "cache",
                 embedding="hill")
    assert error.value.param == "stego_cache" and list(covers.iterdir()) == []


def test_convert_out_on_a_symlink_loop_is_named_a_loop(cli, tmp_path):
    (tmp_path / "out").symlink_to("out")
    code, _, err = cli("convert", MODELS / "tlunet.keras", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "symbolic link loop")
