"""Hostile data files (docs/SECURITY.md, "Bounds"): planted special files, forged stego-cache
entries, decompression bombs, oversized .npz members, non-UTF-8 names.

Every case generates its own hostile file. A case that could hang runs in a subprocess with
a timeout; a case with a memory bound measures the subprocess's peak RSS (VmHWM).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgetrunc._io import open_regular, read_regular, write_text_atomic
from edgetrunc.data.stego_cache import StegoCache, StegoKey, StegoSettings
from edgetrunc.data.stego_entry import MAGIC, encode_entry, min_change_rate
from edgetrunc.errors import InputError
from hostile_files import GIB, flat_png, run_python


# regular files only ------------------------------------------------------------------------

def test_open_regular_refuses_special_files_links_and_oversize(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        open_regular(fifo, "entry")  # refused without blocking on the FIFO
    with pytest.raises(InputError, match="not a regular file"):
        read_regular("/dev/zero", "entry", 100)
    real = tmp_path / "real"
    real.write_bytes(b"x" * 10)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InputError, match="a symbolic link"):
        read_regular(link, "entry", follow_links=False)
    with pytest.raises(InputError, match="over the 9 bytes"):
        read_regular(real, "entry", 9)
    assert read_regular(link, "entry", 10) == b"x" * 10
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")


# the stego cache -------------------------------------------------------------------------

def _tile(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)


def _forged(key, cover, stego=None, reason=None, header=None):
    """An entry as a forger who knows the format writes it (the binding digest included)."""
    data = encode_entry(key, cover, stego, reason)
    if header is None:
        return data
    from edgetrunc.data import stego_entry

    content = len(header).to_bytes(4, "little") + header + (b"" if stego is None else stego.tobytes())
    return MAGIC + content + stego_entry._binding(key, stego_entry.pixel_digest(cover), content)


KEY = StegoKey("0" * 64, (0, 0), 0.4, "hill", 0, 0)


def _plant(cache: StegoCache, data: bytes) -> Path:
    path = cache.path(KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", ["deep", "list", "identical", "too_few", "too_many", "plus_two"])
def test_forged_cache_entries_are_refused(tmp_path, capsys, case):
    cover = _tile()
    stego = cover.copy()
    changes = {"too_few": 1, "too_many": 200, "plus_two": 30}.get(case, 0)
    stego.reshape(-1)[:changes] ^= 1
    if case == "plus_two":
        stego.reshape(-1)[0] = cover.reshape(-1)[0] ^ 2
    header = {"deep": b"[" * 30_000 + b"]" * 30_000, "list": b"[1, 2]"}.get(case)
    cache = StegoCache(tmp_path)
    _plant(cache, _forged(KEY, cover, stego, header=header))
    assert cache.load(KEY, cover) == (None, "rebuild")
    reason = {"deep": "unreadable header", "list": "not a JSON object",
              "identical": "identical to its cover", "too_few": "implausible",
              "too_many": "implausible", "plus_two": "larger than 1"}[case]
    assert reason in capsys.readouterr().err


def test_a_plausible_entry_is_used():
    cover = _tile()
    stego = cover.copy()
    flat = stego.reshape(-1)
    flat[: int(np.ceil(min_change_rate(0.4) * flat.size))] ^= 1
    cache = StegoCache(Path("/nonexistent"))
    from edgetrunc.data.stego_entry import decode_entry

    assert np.array_equal(decode_entry(_forged(KEY, cover, stego), KEY, cover)[0], stego)
    assert cache.path(KEY).name.startswith(KEY.digest())


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "outside"])
def test_a_cache_entry_that_is_a_special_file_or_a_link_is_rebuilt(tmp_path, capsys, target):
    cache = StegoCache(tmp_path / "cache")
    path = cache.path(KEY)
    path.parent.mkdir(parents=True)
    if target == "fifo":
        os.mkfifo(path)
    else:
        outside = tmp_path / "outside.stego"
        outside.write_bytes(_forged(KEY, _tile(), _tile()))
        path.symlink_to("/dev/zero" if target == "/dev/zero" else outside)
    assert cache.load(KEY, _tile()) == (None, "rebuild")
    assert "not usable" in capsys.readouterr().err
    cache.store(KEY, _tile(), None, "cannot carry")  # replaces the planted entry itself
    assert path.is_file() and not path.is_symlink()
    assert cache.load(KEY, _tile()) == (None, "cannot carry")


def test_a_cache_shard_linked_outside_or_a_file_is_refused_in_one_line(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = StegoCache(tmp_path / "cache")
    shard = cache.path(KEY).parent
    shard.parent.mkdir()
    shard.symlink_to(outside)
    with pytest.raises(InputError, match="is a symbolic link; expected a folder"):
        cache.store(KEY, _tile(), None, "cannot carry")
    assert list(outside.iterdir()) == []
    shard.unlink()
    shard.write_text("not a folder")
    with pytest.raises(InputError, match=f"stego cache {cache.root}: .* is not a folder"):
        cache.store(KEY, _tile(), None, "cannot carry")


def test_an_entry_name_taken_by_a_folder_names_the_entry(tmp_path):
    cache = StegoCache(tmp_path)
    cache.path(KEY).mkdir(parents=True)
    with pytest.raises(InputError) as error:
        cache.store(KEY, _tile(), None, "cannot carry")
    assert KEY.digest() in str(error.value) and ".stego." not in str(error.value)
    assert "a folder is in its place" in str(error.value)


# cover folders -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_covers(tmp_path_factory):
    """A cover folder with one good photo, a FIFO, a link to /dev/zero and a 13000x13000
    PNG of about 170 KB."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("covers")
    Image.fromarray(_tile().repeat(20, 0).repeat(20, 1)).save(folder / "good.png")
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    flat_png(folder / "bomb.png", 13000, 13000)
    assert (folder / "bomb.png").stat().st_size < 200_000
    return folder


def test_a_cover_folder_with_a_fifo_a_device_and_a_bomb_is_read_quickly_in_bounded_memory(
        hostile_covers, tmp_path):
    code = f"""
from edgetrunc.data.stream import scan_covers, use_streaming
covers = scan_covers({str(hostile_covers)!r})
print(use_streaming({str(hostile_covers)!r}), [c.name for c in covers])
"""
    result, rss = run_python(code, tmp_path, timeout=60)
    assert result.stdout.splitlines()[0] == "False ['good']", result.stdout
    assert "fifo.png (not a regular file" in result.stderr
    assert "zero.png (not a regular file" in result.stderr
    assert "bomb.png (13000x13000 is over 89 megapixels" in result.stderr
    assert rss < GIB // 2, rss


def test_evaluate_reads_a_large_photo_batch_by_batch(tmp_path):
    """An 81-megapixel photo of 80 KB (under the bound) gives 4761 pairs at stride 128:
    2.5 GB as one float32 array; read batch by batch, one photo is in memory."""
    flat_png(tmp_path / "large.png", 9000, 9000)
    code = f"""
import itertools
from edgetrunc.data.geometry import ImageGeometry
from edgetrunc.evaluate import _pairs
covers, pairs = _pairs({str(tmp_path)!r}, "all", 0.4, 0, None, 128, ImageGeometry(256, 1), None)
shapes = [x.shape for x in itertools.islice(pairs.batches(), 2)]
print(type(pairs).__name__, pairs.n_pairs, shapes[0])
"""
    result, rss = run_python(code, tmp_path)
    assert result.stdout.splitlines()[0] == "StreamPairs 4761 (128, 256, 256, 1)", result.stdout
    assert rss < GIB, rss


def test_a_cover_that_changes_or_vanishes_while_streamed_is_named(tmp_path):
    from PIL import Image

    from edgetrunc.data.stream import scan_covers

    Image.fromarray(_tile().repeat(20, 0).repeat(20, 1)).save(tmp_path / "a.png")
    (ref,) = scan_covers(tmp_path)
    Image.fromarray(_tile()[:8].repeat(20, 0).repeat(20, 1)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="a.png: changed since the folder was read"):
        ref.read()
    (tmp_path / "a.png").unlink()
    with pytest.raises(InputError, match="a.png: no such file"):
        ref.read()


def test_non_utf8_cover_names_split_and_write(tmp_path):
    from PIL import Image

    from edgetrunc.data.covers import load_cover_dir
    from edgetrunc.data.splits import split_sources

    folder = os.fsencode(tmp_path)
    for name in (b"caf\xe9.png", b"b.png", b"c.png"):
        Image.fromarray(_tile().repeat(20, 0).repeat(20, 1)).save(os.fsdecode(folder + b"/" + name))
    covers = load_cover_dir(tmp_path)
    split = split_sources(covers, seed=0)
    assert sorted(sum(split.values(), [])) == sorted(c.name for c in covers)
    report = Path(os.fsdecode(folder + b"/r\xff.html"))
    write_text_atomic(report, f"<p>{covers[-1].origin}</p>")
    assert report.read_text().startswith("<p>") and "\\udce9" in report.read_text()


def test_evaluate_on_a_folder_with_a_non_utf8_name(tmp_path, cli):
    from PIL import Image

    folder = os.fsencode(tmp_path)
    for name in (b"caf\xe9.png", b"b.png", b"c.png"):
        Image.fromarray(_tile().repeat(16, 0).repeat(16, 1)).save(os.fsdecode(folder + b"/" + name))
    model = Path(__file__).resolve().parent.parent / "models" / "tlunet_fp32.tflite"
    code, out, err = cli("evaluate", model, "--covers", tmp_path)
    assert code == 0 and "caf\\xe9" in out and "Traceback" not in err, err


# .npz inputs -------------------------------------------------------------------------------

def test_an_npz_whose_members_unpack_past_the_bound_is_refused_before_allocation(tmp_path):
    """A few MB compressed, 640 MiB of labels uncompressed: refused from the headers."""
    path = tmp_path / "inputs.npz"
    count = 80 * 2**20
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        np.lib.format.write_array(archive.open("x.npy", "w"), np.zeros((1, 8, 8, 1), np.float32))
        with archive.open("labels.npy", "w", force_zip64=True) as stream:
            np.lib.format.write_array_header_1_0(stream, {"descr": "<i8", "fortran_order": False,
                                                          "shape": (count,)})
            block = bytes(2**24)
            for _ in range(count * 8 // len(block)):
                stream.write(block)
    assert path.stat().st_size < 20 * 2**20
    code = f"""
from edgetrunc.errors import InputError
from edgetrunc.runtime.recorded import load_inputs
try:
    load_inputs({str(path)!r})
except InputError as exc:
    print(exc)
"""
    result, rss = run_python(code, tmp_path)
    assert "over the 536870912 bytes (512 MiB)" in result.stdout, result.stdout
    assert rss < GIB // 2, rss


def test_bad_labels_name_the_inputs_file(tmp_path):
    from edgetrunc.runtime.recorded import load_inputs, save_inputs

    path = tmp_path / "inputs.npz"
    save_inputs(path, np.zeros((2, 8, 8, 1), np.float32), labels=[0, 7])
    with pytest.raises(InputError, match=r"inputs.npz: 'labels' holds 7; expected 0 \(cover\)"):
        load_inputs(path)




def test_a_cache_folder_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "cache").write_text("")
    with pytest.raises(InputError, match="cache is a file .or a link to one.; expected a folder"):
        StegoSettings("hill", cache_dir=tmp_path / "cache")


def test_a_symbolic_link_loop_is_named_as_such(tmp_path):
    from edgetrunc.data.images import load_image

    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(InputError, match="a.png: symbolic link loop"):
        load_image(tmp_path / "a.png")


def test_an_entry_of_the_older_format_is_replaced_quietly(tmp_path, capsys):
    from edgetrunc.data.stego_entry import OLD_MAGIC

    cache = StegoCache(tmp_path)
    _plant(cache, OLD_MAGIC + bytes(64))
    assert cache.load(KEY, _tile()) is None and capsys.readouterr().err == ""
