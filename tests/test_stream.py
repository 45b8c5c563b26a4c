"""Streamed cover folders: the same pairs as a direct read, bounded memory (counted), training."""

import json

import numpy as np
import pytest
from PIL import Image

from edgetrunc.data.dataset import load_pairs, tile_seed, training_tiles
from edgetrunc.data.covers import load_cover_dir
from edgetrunc.data.images import load_image
from edgetrunc.data.splits import split_sources
from edgetrunc.data.stego import embed_lsb_matching
from edgetrunc.data.stream import (epoch_pairs, estimate_cover_bytes, scan_covers, stream_pairs,
                                   stream_training_tiles, use_streaming)
from edgetrunc.errors import InputError


def _folder(path, n, height=256, width=512, seed=7):
    rng = np.random.default_rng(seed)
    path.mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(
            path / f"p{i:03d}.pgm")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("covers"), 6, 256, 512)


def test_scan_keeps_no_pixels_and_splits_as_in_memory(folder):
    refs = scan_covers(folder)
    covers = load_cover_dir(folder)
    assert [r.name for r in refs] == [c.name for c in covers]
    assert all(r.pixels is None and r.shape == c.pixels.shape for r, c in zip(refs, covers))
    assert [r.describe() for r in refs] == [c.describe() for c in covers]
    assert split_sources(refs, seed=3) == split_sources(covers, seed=3)
    assert estimate_cover_bytes(folder) == 6 * 256 * 512
    assert use_streaming(folder, mode="auto", limit=6 * 256 * 512 - 1)
    assert not use_streaming(folder) and not use_streaming("embedded")
    with pytest.raises(InputError, match="expected one of auto, on, off"):
        use_streaming(folder, mode="sometimes")


def test_streamed_pairs_equal_load_pairs(folder):
    refs = scan_covers(folder)
    names = [r.name for r in refs]
    streamed = stream_pairs(refs, {"all": names}, "all", 0.4, 1, max_pairs=7, stride=128)
    direct = load_pairs(folder, "all", 0.4, 1, max_pairs=7, stride=128)
    assert streamed.n_pairs == direct.n_pairs == 7
    assert streamed.sources == direct.sources and streamed.positions == direct.positions
    assert streamed.tiles_per_photo() == direct.tiles_per_photo()
    batches = list(streamed.batches(3))
    assert [len(b) for b in batches] == [6, 6, 2]
    np.testing.assert_array_equal(np.concatenate(batches), direct.x)
    np.testing.assert_array_equal(streamed.materialize().x, direct.x)


def test_training_tiles_index_matches_in_memory_tiles(folder):
    refs, covers = scan_covers(folder), load_cover_dir(folder)
    index = stream_training_tiles(refs, stride=128, max_tiles=9, seed=2)
    tiles = training_tiles(covers, stride=128, max_tiles=9, seed=2)
    assert index.sources == tiles.sources and index.positions == tiles.positions
    assert [r.digest for r in index.covers] == tiles.digests


def test_epoch_pairs_are_the_direct_pairs_each_photo_read_once(folder):
    index = stream_training_tiles(scan_covers(folder))
    reads = []
    pairs = list(epoch_pairs(index, 0.5, seed=4, epoch=2, augment=False, reads=reads))
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 6
    assert len(pairs) == len(index) == 12
    expected = []
    for ref, (top, left) in zip(index.covers, index.positions):
        cover = load_image(ref.origin)[top:top + 256, left:left + 256, None]
        stego = embed_lsb_matching(cover, 0.5, tile_seed(4, ref.name, (top, left), 0.5, 2 * 8))
        expected.append(np.stack([cover, stego]).tobytes())
    assert sorted(p.tobytes() for p in pairs) == sorted(expected)
    again = list(epoch_pairs(index, 0.5, seed=4, epoch=2, augment=True))
    other = list(epoch_pairs(index, 0.5, seed=4, epoch=3, augment=True))
    assert all(np.array_equal(a, b) for a, b in zip(again, epoch_pairs(index, 0.5, 4, 2)))
    assert any(not np.array_equal(a, b) for a, b in zip(again, other))
    assert all(np.abs(p[1].astype(int) - p[0]).max() <= 1 for p in again)


def test_pipeline_holds_at_most_the_shuffle_buffer(tmp_path):
    from edgetrunc.train.tf_data import PREFETCH_BATCHES, stream_epoch_dataset

    index = stream_training_tiles(scan_covers(_folder(tmp_path / "many", 40)))  # 80 tiles
    buffer, batch = 4, 2
    reads = []
    dataset = stream_epoch_dataset(index, batch, 10, 0.4, seed=0, epoch=0, shuffle_buffer=buffer,
                                   reads=reads)
    iterator = dataset.as_numpy_iterator()
    x, y = next(iterator)
    assert x.shape == (4, 256, 256, 1) and list(y) == [0, 1, 0, 1]
    assert np.abs(x[1::2] - x[0::2]).max() <= 1  # cover and stego side by side
    # pairs read ahead: the shuffle buffer, the batches prefetched or in flight, one photo
    bound = buffer + (PREFETCH_BATCHES + 2) * batch + 2
    assert 2 * len(reads) <= bound < len(index)
    rest = list(iterator)
    assert len(rest) == 9 and len(reads) <= 40
    first = list(stream_epoch_dataset(index, batch, 10, 0.4, seed=0, epoch=0,
                                      shuffle_buffer=buffer).as_numpy_iterator())
    np.testing.assert_array_equal(first[0][0], x)
    shares = [stream_epoch_dataset(index, 2, 20, 0.4, shuffle_buffer=8, worker=w, workers=2)
              for w in (0, 1)]
    assert [sum(1 for _ in s) for s in shares] == [20, 20]


@pytest.mark.slow
def test_training_streams_a_folder(tmp_path):
    from edgetrunc.cli import main

    covers = _folder(tmp_path / "covers", 5)
    out = tmp_path / "tiny.keras"
    code = main(["-q", "train", "--covers", str(covers), "--stream", "on", "--shuffle-buffer",
                 "8", "--epochs", "1", "--batch-size", "2", "--max-eval-pairs", "4",
                 "--eval-stride", "256", "--model-arg", "width=1", "--out", str(out)])
    assert code == 0
    record = json.loads(out.with_name("tiny.training.json").read_text())
    assert record["data"]["streamed"] and record["config"]["shuffle_buffer"] == 8
    assert record["data"]["train_tiles"] == 2 * len(record["data"]["split"]["train"])
    assert record["test"]["per_source"] and record["data"]["val_pairs"] == 2


def test_cached_embedding_streams_from_the_stego_cache(folder, tmp_path):
    from edgetrunc.data.stego_cache import StegoSettings
    from edgetrunc.data.stream import prefill_stream

    settings = StegoSettings("hill", tmp_path / "cache", 1, 1)
    refs = scan_covers(folder)
    names = [r.name for r in refs]
    streamed = stream_pairs(refs, {"all": names}, "all", 0.4, 0, max_pairs=2, stego=settings)
    direct = load_pairs(folder, "all", 0.4, 0, max_pairs=2, stego=settings)
    np.testing.assert_array_equal(streamed.materialize().x, direct.x)
    index = stream_training_tiles(refs[:1])
    assert prefill_stream(index, [0.4], 0, settings, chunk_tiles=1) == [0, 1]
    embedded = settings.stats.embedded
    pairs = list(epoch_pairs(index, 0.4, seed=0, epoch=5, augment=False, stego=settings))
    assert settings.stats.embedded == embedded and len(pairs) == 2  # fetched, not embedded
    changes = [np.abs(p[1].astype(int) - p[0]) for p in pairs]
    assert all(c.max() == 1 and 0.02 < c.mean() < 0.2 for c in changes)
