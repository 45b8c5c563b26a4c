"""Embedded covers, user cover folders, LSB-matching statistics, splits by source, pairs."""

import numpy as np
import pytest
from PIL import Image

from edgetrunc.data import (Cover, embed_lsb_matching, embedded_covers, load_cover_dir,
                            load_pairs, pair_batches, split_sources, training_tiles)
from edgetrunc.data.dataset import dihedral
from edgetrunc.errors import InputError


@pytest.fixture(scope="module")
def covers():
    return embedded_covers()


def _synthetic_covers(n, size=300):
    rng = np.random.default_rng(5)
    return [Cover(name=f"photo{i:02d}", pixels=rng.integers(0, 256, (size, size), dtype=np.uint8))
            for i in range(n)]


def test_embedded_covers_are_grayscale_photos_of_256_or_more(covers):
    names = [c.name for c in covers]
    assert len(covers) >= 12
    assert {"astronaut", "camera", "coffee", "chelsea", "rocket", "motorcycle", "retina",
            "grass", "gravel", "brick", "hubble_deep_field"} <= set(names)
    assert names == sorted(names)
    for cover in covers:
        assert cover.pixels.dtype == np.uint8 and cover.pixels.ndim == 2
        assert min(cover.pixels.shape) >= 256
        assert cover.pixels.std() > 5  # a photograph, not a flat drawing


def test_embedded_covers_note_jpeg_history(covers):
    by_name = {c.name: c for c in covers}
    assert by_name["retina"].jpeg_history and by_name["retina"].jpeg_file
    assert by_name["moon"].jpeg_history and not by_name["moon"].jpeg_file  # 8x8 block trace
    assert not by_name["gravel"].jpeg_history
    assert "JPEG" in by_name["rocket"].note
    described = by_name["camera"].describe()
    assert described["height"] == 512 and "pixels" not in described


def test_lsb_matching_change_rate_and_bounds():
    cover = np.random.default_rng(1).integers(0, 256, (512, 512), dtype=np.uint8)
    cover[:8] = 0
    cover[8:16] = 255
    for payload in (0.1, 0.4, 1.0):
        stego = embed_lsb_matching(cover, payload, seed=3)
        diff = stego.astype(np.int16) - cover.astype(np.int16)
        assert set(np.unique(diff)) <= {-1, 0, 1}
        assert abs(np.mean(diff != 0) - payload / 2) < 0.01
        assert (diff[cover == 0] >= 0).all() and (diff[cover == 255] <= 0).all()
        assert (diff[cover == 0] == 1).any() and (diff[cover == 255] == -1).any()
        inner = diff[16:]
        assert abs(np.mean(inner == 1) - np.mean(inner == -1)) < 0.01


def test_lsb_matching_rejects_bad_payload():
    cover = np.zeros((4, 4), np.uint8)
    for payload in (0, -0.1, 1.5):
        with pytest.raises(InputError, match="payload"):
            embed_lsb_matching(cover, payload, seed=0)


def test_split_is_disjoint_covering_and_reproducible(covers):
    split = split_sources(covers, seed=0)
    names = [name for part in split.values() for name in part]
    assert sorted(names) == sorted(c.name for c in covers)
    assert len(set(names)) == len(names)
    assert all(split[k] for k in ("train", "val", "test"))
    assert split == split_sources(covers, seed=0)
    assert split != split_sources(covers, seed=1)
    jpeg = {c.name for c in covers if c.jpeg_history}
    assert set(split["test"]) & jpeg and set(split["test"]) - jpeg


def test_split_of_names_and_bad_fractions():
    split = split_sources([f"p{i}" for i in range(10)], seed=0, fractions=(0.8, 0.1, 0.1))
    assert [len(split[k]) for k in ("train", "val", "test")] == [8, 1, 1]
    with pytest.raises(InputError, match="fractions"):
        split_sources(["a", "b"], fractions=(0.5, 0.6, 0.1))


def test_load_pairs_layout_sources_and_determinism(covers):
    pairs = load_pairs(covers, split="test", payload=0.4, seed=0, max_pairs=6)
    assert pairs.x.shape == (12, 256, 256, 1) and pairs.x.dtype == np.float32
    assert pairs.y.dtype == np.int64 and pairs.y.tolist() == [0, 1] * 6
    assert pairs.sources[0::2] == pairs.sources[1::2]
    test_photos = set(split_sources(covers, seed=0)["test"])
    assert set(pairs.sources) <= test_photos and len(set(pairs.sources)) == len(test_photos)
    diff = pairs.stegos - pairs.covers
    assert set(np.unique(diff)) <= {-1.0, 0.0, 1.0}
    assert abs(np.mean(diff != 0) - 0.2) < 0.01
    again = load_pairs(covers, split="test", payload=0.4, seed=0, max_pairs=6)
    np.testing.assert_array_equal(pairs.x, again.x)
    other = load_pairs(covers, split="test", payload=0.4, seed=1, max_pairs=6)
    assert not np.array_equal(pairs.x, other.x)


def test_load_pairs_splits_share_no_photo(covers):
    seen = [set(load_pairs(covers, split=s, max_pairs=40).sources) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_load_pairs_stride_gives_overlapping_tiles():
    cover = _synthetic_covers(1, size=512)
    pairs = load_pairs(cover, split="all", stride=128)
    assert pairs.n_pairs == 9
    assert pairs.positions[0::2] == [(y, x) for y in (0, 128, 256) for x in (0, 128, 256)]


def test_load_pairs_rejects_bad_payload():
    with pytest.raises(InputError, match="payload"):
        load_pairs(_synthetic_covers(3), split="all", payload=1.2)


def test_pair_batches_keep_pairs_together_and_augment():
    tiles = training_tiles(_synthetic_covers(3, size=256))
    batches = list(pair_batches(tiles, payload=0.5, batch_pairs=2, seed=0, epoch=0,
                                drop_remainder=False))
    assert [b[0].shape[0] for b in batches] == [4, 2]
    x, y = batches[0]
    assert y.tolist() == [0, 1, 0, 1]
    diff = x[1::2] - x[0::2]
    assert set(np.unique(diff)) <= {-1.0, 0.0, 1.0} and (diff != 0).mean() > 0.2
    again = list(pair_batches(tiles, payload=0.5, batch_pairs=2, seed=0, epoch=0,
                              drop_remainder=False))
    np.testing.assert_array_equal(batches[0][0], again[0][0])
    later = list(pair_batches(tiles, payload=0.5, batch_pairs=2, seed=0, epoch=1,
                              drop_remainder=False))
    assert not np.array_equal(np.concatenate([b[0] for b in batches]),
                              np.concatenate([b[0] for b in later]))
    seen = {tuple(np.sort(b[0][0::2].reshape(b[0].shape[0] // 2, -1).sum(1)))
            for b in batches}
    assert seen  # every cover tile is a rotation/flip of a source tile (pixel sums kept)


def test_dihedral_gives_eight_distinct_views():
    tile = np.arange(16).reshape(4, 4)
    views = {dihedral(tile, k).tobytes() for k in range(8)}
    assert len(views) == 8


def _write(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)


def test_load_cover_dir_reads_lossless_and_lists_skipped(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _write(tmp_path / "a.png", rng.integers(0, 256, (300, 260), dtype=np.uint8))
    _write(tmp_path / "b.pgm", rng.integers(0, 256, (256, 256), dtype=np.uint8))
    _write(tmp_path / "c.tif", rng.integers(0, 256, (256, 300, 3), dtype=np.uint8))
    _write(tmp_path / "small.png", rng.integers(0, 256, (100, 100), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("hello")
    covers = load_cover_dir(tmp_path)
    assert [c.name for c in covers] == ["a", "b", "c"]
    assert covers[2].pixels.shape == (256, 300) and covers[2].pixels.dtype == np.uint8
    err = capsys.readouterr().err
    assert "small.png" in err and "100x100" in err and "notes.txt" in err


def test_load_cover_dir_warns_on_jpeg(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(tmp_path / "j.jpg")
    covers = load_cover_dir(tmp_path)
    assert covers[0].jpeg_history
    assert "JPEG" in capsys.readouterr().err


def test_load_cover_dir_errors(tmp_path):
    with pytest.raises(InputError, match="no such"):
        load_cover_dir(tmp_path / "missing")
    with pytest.raises(InputError, match="empty"):
        load_cover_dir(tmp_path)
    _write(tmp_path / "tiny.png", np.zeros((64, 64), np.uint8))
    Image.fromarray(np.zeros((300, 300), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(InputError, match=r"no usable cover image.*tiny.png.*64x64") as info:
        load_cover_dir(tmp_path)
    assert "16-bit" in str(info.value) or "deep.png" in str(info.value)
