"""Embeddings (LSB matching, and HILL / S-UNIWARD / WOW through conseal) and the stego cache:
every change is +-1 within 0..255, the cache is reused (a second run embeds nothing), a corrupt
or foreign entry is rebuilt with a warning, and `train`, `evaluate` and `parity --inputs stego`
run with each embedding; bad input exits 2 with one line. Tiny tiles and few pairs."""

import json

import numpy as np
import pytest
from PIL import Image

from edgetrunc.cli import main
from edgetrunc.data.dataset import load_pairs
from edgetrunc.data.embeddings import PayloadTooLarge, embed
from edgetrunc.data.stego_cache import StegoCache, StegoSettings, default_cache_dir
from edgetrunc.errors import InputError

ADAPTIVE = ("hill", "suniward", "wow")


@pytest.fixture(autouse=True)
def _private_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))


def _textured_tile(size=64, seed=0):
    """Noise with saturated corners, so both 0 and 255 occur next to texture."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(20, 236, (size, size)).astype(np.uint8)
    tile[:8, :8], tile[-8:, -8:] = 0, 255
    return tile


@pytest.mark.parametrize("scheme", ADAPTIVE + ("lsbm",))
def test_every_change_is_one_and_stays_in_range(scheme):
    import conseal

    cover = _textured_tile()
    stego = embed(cover, 0.4, 7, scheme)
    delta = stego.astype(np.int16) - cover.astype(np.int16)
    assert stego.dtype == np.uint8 and set(np.unique(delta)) <= {-1, 0, 1}
    assert 0.02 < (delta != 0).mean() < 0.3
    assert not (delta[cover == 0] < 0).any() and not (delta[cover == 255] > 0).any()
    assert np.array_equal(stego, embed(cover, 0.4, 7, scheme))  # seeded
    if scheme != "lsbm":  # the same pixels as conseal's own simulator
        assert np.array_equal(stego, getattr(conseal, scheme).simulate_single_channel(cover, 0.4, seed=7))


def test_float_cover_and_flat_tile_are_refused():
    with pytest.raises(InputError, match="uint8"):
        embed(_textured_tile().astype(np.float32), 0.4, 0, "hill")
    with pytest.raises(PayloadTooLarge, match="carries at most"):
        embed(np.full((64, 64), 128, np.uint8), 0.4, 0, "hill")
    with pytest.raises(InputError, match="unknown embedding"):
        StegoSettings("f5")


def test_default_cache_dir_follows_xdg(tmp_path):
    assert default_cache_dir() == tmp_path / "cache-home" / "edgetrunc" / "stego"


def _pairs(folder, workers=1):
    settings = StegoSettings("hill", cache_dir=folder, workers=workers)
    pairs = load_pairs(split="test", max_pairs=10, tile=64, stride=64, stego=settings)
    return pairs, settings.stats


@pytest.mark.slow
def test_cache_is_reused_and_a_bad_entry_is_rebuilt(tmp_path, capsys):
    first, stats = _pairs(tmp_path, workers=2)  # 10 misses: the process pool
    assert first.n_pairs == 10 and (stats.embedded, stats.reused) == (10, 0)
    delta = first.stegos - first.covers
    assert set(np.unique(delta)) <= {-1, 0, 1} and (delta != 0).any()
    again, stats = _pairs(tmp_path)
    assert (stats.embedded, stats.reused) == (0, 10) and np.array_equal(first.x, again.x)
    entries = sorted(tmp_path.rglob("*.stego"))
    assert len(entries) == 10 and not list(tmp_path.rglob(".*"))
    corrupt = bytearray(entries[0].read_bytes())
    corrupt[-40] ^= 1
    entries[0].write_bytes(bytes(corrupt))
    entries[2].write_bytes(entries[1].read_bytes())  # another tile's entry
    capsys.readouterr()
    rebuilt, stats = _pairs(tmp_path)
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "made for another key" in err
    assert (stats.embedded, stats.rebuilt, stats.reused) == (2, 2, 8)
    assert np.array_equal(first.x, rebuilt.x)


def test_cache_entry_is_bound_to_its_cover_tile(tmp_path, capsys):
    from edgetrunc.data.stego_cache import StegoKey, embed_entry

    key = StegoKey("0" * 64, (0, 0), 0.4, "hill", 0, 0)
    cover = _textured_tile()
    stego, reason = embed_entry(tmp_path, key, cover)
    assert reason is None and np.array_equal(StegoCache(tmp_path).load(key, cover)[0], stego)
    assert StegoCache(tmp_path).load(key, _textured_tile(seed=1)) == (None, "rebuild")
    assert "made from another cover tile" in capsys.readouterr().err


@pytest.fixture(scope="module")
def stego_detector(tmp_path_factory):
    from edgetrunc.export import export_tflite
    from edgetrunc.models import create

    folder = tmp_path_factory.mktemp("stego")
    model = create("tlunet", seed=0)
    model.save(folder / "detector.keras")
    (folder / "detector.tflite").write_bytes(export_tflite(model, "fp32"))
    return folder


def _one_line_error(capsys, text):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and text in err, err


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ADAPTIVE)
def test_train_with_each_embedding(scheme, tmp_path):
    out = tmp_path / "tiny.keras"
    assert main(["-q", "train", "--embedding", scheme, "--stego-cache", str(tmp_path / "cache"),
                 "--epochs", "1", "--max-tiles", "2", "--batch-size", "2", "--messages", "1",
                 "--max-eval-pairs", "2", "--eval-stride", "256", "--bn-reestimate", "none",
                 "--out", str(out)]) == 0
    record = json.loads((tmp_path / "tiny.training.json").read_text())
    assert record["config"]["embedding"] == scheme and record["config"]["messages"] == 1
    assert record["data"]["stego_cache"]["embedded"] >= 2 and record["data"]["train_tiles"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ADAPTIVE)
def test_evaluate_and_parity_with_each_embedding(scheme, stego_detector, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    args = ["evaluate", str(stego_detector / "detector.keras"), "--embedding", scheme,
            "--stego-cache", cache, "--max-pairs", "2", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["embedding"] == scheme and report["pairs"] == 2
    assert main(args) == 0  # the second run embeds nothing
    assert "0 embedded, 2 reused" in capsys.readouterr().err
    assert main(["-q", "parity", str(stego_detector / "detector.keras"),
                 str(stego_detector / "detector.tflite"),
                 "--inputs", "stego", "--embedding", scheme, "--stego-cache", cache,
                 "--samples", "2", "--no-probes", "--json", str(tmp_path / "parity.json")]) == 0
    inputs = json.loads((tmp_path / "parity.json").read_text())["inputs"]
    assert inputs["embedding"] == scheme and inputs["composition"] == {"stego": 2}


def test_bad_stego_input_exits_2_with_one_line(stego_detector, tmp_path, capsys):
    model = str(stego_detector / "detector.keras")
    assert main(["evaluate", model, "--embedding", "f5"]) == 2
    _one_line_error(capsys, "--embedding: unknown embedding 'f5'")
    (tmp_path / "file").write_text("")
    assert main(["evaluate", model, "--embedding", "hill", "--stego-cache",
                 str(tmp_path / "file" / "cache")]) == 2
    _one_line_error(capsys, "--stego-cache:")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((256, 256), 60 * i, np.uint8)).save(flat / f"flat{i}.png")
    assert main(["-q", "evaluate", model, "--covers", str(flat), "--embedding", "wow",
                 "--stego-cache", str(tmp_path / "cache")]) == 2
    _one_line_error(capsys, "--payload: wow cannot carry 0.4 bits per pixel")
