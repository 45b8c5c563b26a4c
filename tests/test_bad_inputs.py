"""Real-world photos, broken files and odd options through every command that reads or writes.

The contract: a bad input ends in ONE line naming the file and what was expected, exit code 2,
never a traceback; a folder's unusable files are skipped with one warning line; outputs are
written atomically and never over an input; unusual but valid inputs just work.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from edgetrunc.cli import main
from edgetrunc.data.covers import load_cover_dir
from edgetrunc.data.images import image_files, load_image
from edgetrunc.errors import InputError
from edgetrunc.runtime import open_runner
from edgetrunc.runtime.scoring import score_image

ROOT = Path(__file__).resolve().parent.parent
H, W = 270, 260  # portrait: a rotation would show as a transposed shape


# fixtures -------------------------------------------------------------------------------

def _png(width, height, bit_depth, color_type, raw_rows: bytes) -> bytes:
    """A PNG written chunk by chunk (for what Pillow cannot save: 16-bit RGB, huge headers)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows))
            + chunk(b"IEND", b""))


def _encoded(img, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gray():
    return np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)


GOOD = ["gray.png", "rgb.png", "rgba.png", "la.png", "palette.png", "bit1.png", "gray.jpg",
        "rgb.jpg", "cmyk.jpg", "progressive.jpg", "exif_rotated.jpg", "icc.png", "icc.jpg",
        "gray.tif", "rgb.bmp", "lossless.webp", "lossy.webp", "single.gif", "gray.pgm",
        "rgb.ppm", "UPPER.PNG", "UPPER.JPG", "UPPER.TIFF", "ünïcödé name.png", "exact.png",
        "link.png"]
BAD = {  # file -> what the one-line error says
    "gray16.png": "16-bit grayscale", "rgb16.png": "16-bit RGB", "gray16.tif": "16-bit grayscale",
    "float.tif": "32-bit float", "gray16.pgm": "16-bit grayscale", "pages.tif": "2 frames",
    "animated.gif": "2 frames", "tiny.png": "100x100 pixels; expected at least 256x256",
    "short.png": "256x255 pixels", "empty.png": "empty file", "truncated.png": "unreadable image",
    "truncated.jpg": "unreadable image", "text.png": "not an image", "dangling.png": "broken symbolic link",
    "folder.png": "is a directory", "huge.png": "megapixels",
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, gray, rgb):
    """A folder of every variant: GOOD ones load, BAD ones are refused."""
    d = tmp_path_factory.mktemp("photos")
    g, c = Image.fromarray(gray), Image.fromarray(rgb)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    g.save(d / "gray.png")
    c.save(d / "rgb.png")
    Image.fromarray(np.dstack([rgb, gray])).save(d / "rgba.png")
    g.convert("LA").save(d / "la.png")
    c.convert("P").save(d / "palette.png")
    g.convert("1").save(d / "bit1.png")
    g.save(d / "gray.jpg", quality=95)
    c.save(d / "rgb.jpg", quality=95)
    c.convert("CMYK").save(d / "cmyk.jpg")
    c.save(d / "progressive.jpg", progressive=True)
    c.save(d / "exif_rotated.jpg", exif=exif)
    c.save(d / "icc.png", icc_profile=srgb)
    c.save(d / "icc.jpg", icc_profile=srgb)
    g.save(d / "gray.tif")
    c.save(d / "rgb.bmp")
    c.save(d / "lossless.webp", lossless=True)
    c.save(d / "lossy.webp", quality=80)
    g.save(d / "single.gif")
    g.save(d / "gray.pgm")
    c.save(d / "rgb.ppm")
    g.save(d / "UPPER.PNG")
    g.save(d / "UPPER.JPG")
    g.save(d / "UPPER.TIFF")
    g.save(d / "ünïcödé name.png")
    Image.fromarray(gray[:256, :256]).save(d / "exact.png")
    os.symlink("gray.png", d / "link.png")
    wide = gray.astype(np.uint16) * 257
    Image.fromarray(wide).save(d / "gray16.png")
    rows = b"".join(b"\x00" + (rgb[y].astype(">u2") * 257).tobytes() for y in range(H))
    (d / "rgb16.png").write_bytes(_png(W, H, 16, 2, rows))
    Image.fromarray(wide).save(d / "gray16.tif")
    Image.fromarray(gray.astype(np.float32)).save(d / "float.tif")
    Image.fromarray(wide).save(d / "gray16.pgm")
    g.save(d / "pages.tif", save_all=True, append_images=[g])
    g.save(d / "animated.gif", save_all=True, append_images=[Image.fromarray(255 - gray)])
    Image.fromarray(gray[:100, :100]).save(d / "tiny.png")
    Image.fromarray(gray[:255, :256]).save(d / "short.png")
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes(_encoded(g, "PNG")[:5000])
    (d / "truncated.jpg").write_bytes(_encoded(c, "JPEG")[:5000])
    (d / "text.png").write_text("not an image\n")
    os.symlink("missing.png", d / "dangling.png")
    (d / "folder.png").mkdir()
    (d / "huge.png").write_bytes(_png(20000, 20000, 8, 0, b"\x00" * 21))  # header only: a bomb
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (d / "README.txt").write_text("notes")
    return d


@pytest.fixture(scope="module")
def covers3(tmp_path_factory):
    """Three plain 256x256 covers: a folder every evaluate call can use."""
    d = tmp_path_factory.mktemp("covers3")
    rng = np.random.default_rng(4)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (256, 256), np.uint8)).save(d / f"c{i}.png")
    return d


@pytest.fixture(scope="module")
def tflite(detector):
    return detector["tflite"]


@pytest.fixture(scope="module")
def onnx_model(detector):
    return detector["onnx"]


def _tiny_onnx(path, shape, opset=13):
    """An ONNX 'detector' with input `shape`: mean pixel / 255 as a sigmoid column [N, 1]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rank = len(shape)
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=list(range(1, rank)), keepdims=0),
             helper.make_node("Mul", ["m", "k"], ["p"]),
             helper.make_node("Unsqueeze", ["p", "axis"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 1])],
        [numpy_helper.from_array(np.array(1 / 255, np.float32), "k"),
         numpy_helper.from_array(np.array([1], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd_models")
    return {name: _tiny_onnx(d / f"{name}.onnx", shape) for name, shape in {
        "dynamic": ["N", 256, 256, 1], "fixed1": [1, 256, 256, 1], "small": ["N", 128, 128, 1],
        "color": ["N", 256, 256, 3], "five": ["N", 256, 256, 5], "rect": ["N", 256, 512, 1],
        "flat": ["N", 65536]}.items()}


def _one_line_error(err: str, *needles) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


# load_image: the image-format policy ------------------------------------------------------

@pytest.mark.parametrize("name", GOOD)
def test_eight_bit_variants_load_as_stored_gray_pixels(photos, gray, rgb, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = load_image(photos / name)
    expected_shape = (256, 256) if name == "exact.png" else (H, W)
    assert pixels.dtype == np.uint8 and pixels.shape == expected_shape  # never rotated or resized
    if name in ("gray.png", "UPPER.PNG", "gray.tif", "gray.pgm", "link.png", "ünïcödé name.png",
                "single.gif", "la.png"):
        np.testing.assert_array_equal(pixels, gray)
    if name in ("rgb.png", "rgba.png", "rgb.bmp", "rgb.ppm", "lossless.webp", "icc.png"):
        np.testing.assert_array_equal(pixels, np.asarray(Image.fromarray(rgb).convert("L")))


def test_exif_orientation_is_ignored(photos):
    """Steganalysis sees the pixels as stored: the same decode as without the tag."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rotated = load_image(photos / "exif_rotated.jpg")
    with Image.open(photos / "exif_rotated.jpg") as img:
        assert img.getexif().get(0x0112) == 6
        np.testing.assert_array_equal(rotated, np.asarray(img.convert("L")))


@pytest.mark.parametrize("name", sorted(BAD))
def test_unusable_images_are_one_line_input_errors(photos, name):
    with pytest.raises(InputError) as exc:
        load_image(photos / name)
    message = str(exc.value)
    assert message.startswith(str(photos / name) + ": ") and "\n" not in message
    assert BAD[name] in message


def test_multi_picture_camera_jpeg_reads_its_main_picture(rgb, tmp_path):
    main_picture, preview = Image.fromarray(rgb), Image.fromarray(rgb[:120, :160])
    main_picture.save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[preview])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = load_image(tmp_path / "camera.jpg")
    with Image.open(tmp_path / "camera.jpg") as img:
        assert img.format == "MPO" and img.n_frames == 2
        np.testing.assert_array_equal(pixels, np.asarray(img.convert("L")))
    assert pixels.shape == (H, W)


def test_sixteen_bit_rgb_tiff_is_refused(rgb, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb.astype(np.uint16) * 257)
    with pytest.raises(InputError, match="rgb16.tif: 16-bit RGB image; expected 8 bits per sample"):
        load_image(tmp_path / "rgb16.tif")


def test_lossy_inputs_warn_whatever_their_suffix(photos, tmp_path):
    disguised = tmp_path / "photo.png"
    disguised.write_bytes((photos / "rgb.jpg").read_bytes())
    Image.open(photos / "rgb.png").save(tmp_path / "jpeg_inside.tif", compression="jpeg")
    Image.open(photos / "rgb.png").save(tmp_path / "lzw.tif", compression="tiff_lzw")
    for path, warned in ((photos / "rgb.jpg", "JPEG"), (photos / "lossy.webp", "WebP"),
                         (tmp_path / "jpeg_inside.tif", "JPEG-compressed TIFF"),
                         (tmp_path / "lzw.tif", None),
                         (disguised, "JPEG"), (photos / "lossless.webp", None),
                         (photos / "rgb.png", None)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_image(path)
        messages = [str(w.message) for w in caught]
        assert (any(warned in m for m in messages) if warned else not messages), (path, messages)


def test_folder_listing_ignores_hidden_files_and_notes_other_suffixes(photos):
    files, skipped = image_files(photos)
    names = [f.name for f in files]
    assert ".DS_Store" not in names and "folder.png" not in names
    assert names == sorted(names) and "UPPER.TIFF" in names and "lossless.webp" in names
    assert skipped == ["README.txt (not an image suffix)"]


def test_large_images_are_scored_in_bounded_batches(tmp_path):
    class Recorder:
        name = "recorder"

        def __init__(self):
            self.batches = []

        def input_size(self):
            return (256, 256)

        def infer(self, batch):
            self.batches.append(batch.shape)
            return {"p": np.full((len(batch), 1), 0.25, np.float32)}

    Image.fromarray(np.zeros((1100, 1300), np.uint8)).save(tmp_path / "big.png")
    recorder = Recorder()
    score = score_image(recorder, tmp_path / "big.png", batch_size=4)
    assert len(score.tiles) == 4 * 5 and score.stego_probability == pytest.approx(0.25)
    assert all(shape[0] <= 4 and shape[1:] == (256, 256, 1) for shape in recorder.batches)
    assert score.dropped_border == (1300 - 5 * 256, 1100 - 4 * 256)


def test_non_finite_model_output_is_an_error(tmp_path):
    class Broken:
        name = "broken.tflite"

        def input_size(self):
            return (256, 256)

        def infer(self, batch):
            return {"p": np.full((len(batch), 2), np.nan, np.float32)}

    Image.fromarray(np.zeros((256, 256), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="non-finite output"):
        score_image(Broken(), tmp_path / "a.png")


# infer -------------------------------------------------------------------------------------

def test_infer_scores_every_good_variant_and_names_each_bad_file(photos, tflite, capsys):
    good = [str(photos / name) for name in GOOD]
    bad = [str(photos / name) for name in ("gray16.png", "empty.png", "text.png", "folder.png")]
    assert main(["-q", "infer", str(tflite), *good, *bad, "--json"]) == 2
    captured = capsys.readouterr()
    import json

    results = json.loads(captured.out)["results"]
    assert [r["image"] for r in results] == good
    assert all(0 <= r["stego_probability"] <= 1 for r in results)
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 4  # one line per named file; folder.png is a folder, expanded (empty)
    for needle in ("gray16.png: 16-bit grayscale", "empty.png: empty file",
                   "text.png: not an image", "folder.png: empty folder"):
        assert sum(needle in e for e in errors) == 1, needle


def test_infer_on_a_folder_skips_unusable_files_with_one_warning(photos, onnx_model, capsys):
    assert main(["-q", "infer", str(onnx_model), str(photos)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error:" not in captured.err
    warning = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(warning) == 1
    for name in BAD:
        if name != "folder.png":
            assert name in warning[0], name
    assert "README.txt" in warning[0] and ".DS_Store" not in warning[0]
    assert "ünïcödé name.png" in captured.out and "UPPER.TIFF" in captured.out


@pytest.mark.parametrize("content", ["empty", "text"])
def test_infer_on_a_folder_without_images_exits_2(tmp_path, tflite, capsys, content):
    if content == "text":
        (tmp_path / "notes.txt").write_text("x")
        (tmp_path / ".DS_Store").write_bytes(b"x")
    assert main(["-q", "infer", str(tflite), str(tmp_path)]) == 2
    _one_line_error(capsys.readouterr().err, tmp_path,
                    "empty folder" if content == "empty" else "no usable image")


# model artifacts -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_artifacts(tmp_path_factory, tflite, onnx_model):
    d = tmp_path_factory.mktemp("bad_artifacts")
    (d / "dir.tflite").mkdir()
    (d / "zero.tflite").write_bytes(b"")
    (d / "zero.onnx").write_bytes(b"")
    (d / "truncated.tflite").write_bytes(Path(tflite).read_bytes()[:3000])
    (d / "truncated.onnx").write_bytes(Path(onnx_model).read_bytes()[:3000])
    random_bytes = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (d / "random.tflite").write_bytes(random_bytes)
    (d / "random.onnx").write_bytes(random_bytes)
    (d / "onnx_inside.tflite").write_bytes(Path(onnx_model).read_bytes())
    (d / "tflite_inside.onnx").write_bytes(Path(tflite).read_bytes())
    (d / "keras_inside.tflite").write_bytes(b"PK\x03\x04" + bytes(64))
    (d / "model").write_bytes(Path(tflite).read_bytes())
    return {
        d / "missing.tflite": "no such .tflite file",
        d / "dir.tflite": "is a directory",
        d / "zero.tflite": "empty file",
        d / "zero.onnx": "empty file",
        d / "truncated.tflite": "not a valid TFLite model",
        d / "truncated.onnx": "not a valid ONNX model",
        d / "random.tflite": "not a valid TFLite model",
        d / "random.onnx": "not a valid ONNX model",
        d / "onnx_inside.tflite": "looks like an ONNX model, not a .tflite model; rename it to .onnx",
        d / "tflite_inside.onnx": "holds a TFLite flatbuffer, not a .onnx model; rename it to .tflite",
        d / "keras_inside.tflite": "Keras .keras archive",
        d / "model": "expected a .tflite or .onnx artifact",
    }


def test_bad_artifacts_are_one_line_errors_in_infer_and_evaluate(bad_artifacts, photos, covers3,
                                                                   capsys):
    for path, reason in bad_artifacts.items():
        assert main(["-q", "infer", str(path), str(photos / "gray.png")]) == 2, path
        _one_line_error(capsys.readouterr().err, path, reason)
    for path, reason in list(bad_artifacts.items())[4:8]:
        assert main(["-q", "evaluate", str(path), "--covers", str(covers3), "--max-pairs", "2"]) == 2
        _one_line_error(capsys.readouterr().err, path, reason)


def test_bad_artifacts_are_one_line_errors_in_bench(bad_artifacts, capsys):
    for path in [p for p in bad_artifacts if p.name in ("zero.onnx", "truncated.tflite",
                                                        "onnx_inside.tflite")]:
        assert main(["-q", "bench", str(path), "--runs", "1", "--warmup", "0"]) == 2
        _one_line_error(capsys.readouterr().err, path, bad_artifacts[path])


def test_unusual_model_inputs(odd_models, photos, covers3, capsys):
    image = str(photos / "gray.png")
    for name, needle in (("five", "5 channels; expected 1 (grayscale) or 3 (RGB)"),
                         ("rect", "expected square tiles"), ("flat", "expected an image batch")):
        assert main(["-q", "infer", str(odd_models[name]), image]) == 2
        _one_line_error(capsys.readouterr().err, odd_models[name], needle)
    assert main(["-q", "infer", str(odd_models["color"]), image]) == 0  # RGB tiles (gray replicated)
    capsys.readouterr()
    # a fixed batch of 1 runs in steps and gives what the dynamic-batch model gives
    big = photos.parent / "three_tiles.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (256, 768), np.uint8)).save(big)
    fixed = score_image(open_runner(odd_models["fixed1"]), big)
    dynamic = score_image(open_runner(odd_models["dynamic"]), big)
    assert len(fixed.tiles) == 3 and fixed.stego_probability == pytest.approx(dynamic.stego_probability)
    # a 128x128 model tiles at its own input size
    small = score_image(open_runner(odd_models["small"]), big)
    assert len(small.tiles) == 2 * 6
    # evaluate scores tiles at the model's geometry: inputs that are no image are one clear line
    for name in ("color", "small"):
        assert main(["-q", "evaluate", str(odd_models[name]), "--covers", str(covers3),
                     "--max-pairs", "2", "--stride", "128"]) == 0
        capsys.readouterr()
    for name in ("five", "flat"):
        assert main(["-q", "evaluate", str(odd_models[name]), "--covers", str(covers3),
                     "--max-pairs", "2"]) == 2
        _one_line_error(capsys.readouterr().err, odd_models[name], "expected")
    assert main(["-q", "bench", str(odd_models["flat"]), "--runs", "1"]) == 2
    _one_line_error(capsys.readouterr().err, odd_models["flat"], "expected an image input")
    assert main(["-q", "bench", str(odd_models["fixed1"]), "--runs", "1", "--batch", "2",
                 "--json"]) == 0
    capsys.readouterr()


# evaluate and train cover folders -------------------------------------------------------------

def test_cover_folder_refuses_twin_photo_names(photos, tmp_path):
    twin = tmp_path / "twins"
    twin.mkdir()
    for name in ("a.png", "a.JPG", "b.png", "c.tif"):
        (twin / name).write_bytes((photos / ("gray.png" if name != "a.JPG" else "UPPER.JPG"))
                                  .read_bytes())
    with pytest.raises(InputError, match=r"a.JPG, a.png share the photo name 'a'"):
        load_cover_dir(twin)


def test_evaluate_on_a_mixed_folder(photos, tmp_path, tflite, capsys):
    folder = tmp_path / "covers"
    folder.mkdir()
    for name in ("rgb.png", "gray.tif", "cmyk.jpg", "lossless.webp", "gray16.png", "text.png",
                 "tiny.png", "README.txt", ".DS_Store"):
        (folder / name).write_bytes((photos / name).read_bytes())
    # --max-pairs below the photo count once crashed on photos left without a pair
    assert main(["-q", "evaluate", str(tflite), "--covers", str(folder), "--max-pairs", "2",
                 "--json"]) == 0
    captured = capsys.readouterr()
    import json

    report = json.loads(captured.out)
    assert report["pairs"] == 2 and len(report["photos"]) == 2
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "gray16.png (16-bit grayscale image)" in skipped[0]
    assert "text.png" in skipped[0] and "tiny.png (100x100 pixels)" in skipped[0]
    assert "lossy cover(s) (cmyk.jpg)" in captured.err
    for name in ("empty", "only_text"):
        other = tmp_path / name
        other.mkdir()
        if name == "only_text":
            (other / "notes.txt").write_text("x")
        assert main(["-q", "evaluate", str(tflite), "--covers", str(other)]) == 2
        _one_line_error(capsys.readouterr().err, other)


def test_train_with_a_mixed_cover_folder(photos, tmp_path, capsys):
    folder = tmp_path / "covers"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (256, 256), np.uint8)).save(folder / f"p{i}.png")
    for name in ("text.png", "tiny.png", "animated.gif", ".DS_Store"):
        (folder / name).write_bytes((photos / name).read_bytes())
    out = tmp_path / "new" / "model.keras"
    common = ["-q", "train", "--covers", str(folder), "--epochs", "1", "--max-tiles", "2",
              "--max-eval-pairs", "1", "--batch-size", "1", "--out", str(out),
              "--bn-reestimate", "none"]
    assert main(common + ["--model", "seed_block"]) == 2  # not a two-way detector
    _one_line_error(capsys.readouterr().err, "--model seed_block", "[N, 2]")
    assert main(common + ["--model", "tlunet", "--model-arg", "width=1"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "skipped 3 file(s)" in err
    assert out.is_file() and out.with_name("model.training.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporaries


# parity --inputs DIR ------------------------------------------------------------------------

KERAS = ROOT / "models" / "tlunet.keras"


@pytest.mark.skipif(not KERAS.exists(), reason="needs the shipped Keras model")
def test_parity_on_a_folder_skips_unusable_files(photos, tflite, tmp_path, capsys, monkeypatch):
    args = ["-q", "parity", str(KERAS), str(tflite), "--no-probes"]
    report = tmp_path / "missing" / "folder" / "report.json"
    assert main(args + ["--inputs", str(photos), "--samples", "64", "--json", str(report)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err
    assert report.is_file()  # the missing folders were created
    warning = [line for line in err.splitlines() if "skipped" in line]
    assert len(warning) == 1 and "gray16.png (16-bit grayscale image)" in warning[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    args += ["--samples", "3"]
    assert main(args + ["--inputs", str(empty)]) == 2
    _one_line_error(capsys.readouterr().err, empty, "empty folder")
    assert main(args + ["--inputs", str(photos / "gray.png")]) == 2
    _one_line_error(capsys.readouterr().err, "not a folder")
    # a folder named like a built-in input kind: the keyword wins, with a warning
    monkeypatch.chdir(tmp_path)
    (tmp_path / "random").mkdir()
    assert main(args + ["--inputs", "random"]) == 0
    assert "pass ./random for the folder" in capsys.readouterr().err


@pytest.mark.skipif(not KERAS.exists(), reason="needs the shipped Keras model")
def test_parity_bad_artifacts_and_model_slot(bad_artifacts, tflite, capsys):
    args = ["--samples", "2", "--no-probes", "--inputs", "random"]
    for path, reason in list(bad_artifacts.items())[:9]:
        assert main(["-q", "parity", str(KERAS), str(path), *args]) == 2, path
        _one_line_error(capsys.readouterr().err, path)
    assert main(["-q", "parity", str(tflite), str(tflite), *args]) == 2
    _one_line_error(capsys.readouterr().err, tflite, "expected the Keras model")


@pytest.mark.skipif(not KERAS.exists(), reason="needs the shipped Keras model")
@pytest.mark.parametrize("option,value,needle", [
    ("--json", "{artifact}", "refusing to overwrite an input file"),
    ("--json", "{tmp}", "is a folder"),
    ("--html", "-", "needs a file path"),
    ("--atol", "nan", "--atol"),
    ("--rtol", "-1", "--rtol"),
])
def test_parity_bad_output_and_tolerance_options(tflite, tmp_path, capsys, option, value, needle):
    value = value.format(artifact=tflite, tmp=tmp_path)
    assert main(["-q", "parity", str(KERAS), str(tflite), "--samples", "2", "--no-probes",
                 "--inputs", "random", option, value]) == 2
    _one_line_error(capsys.readouterr().err, needle)


# convert outputs ------------------------------------------------------------------------------

def test_convert_output_folders(tiny_keras, tmp_path, capsys):
    base = ["-q", "convert", str(tiny_keras), "--tflite", "fp32", "--onnx", ""]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(base + ["--out", str(a_file)]) == 2
    _one_line_error(capsys.readouterr().err, a_file, "not a folder")
    assert main(base + ["--out", str(a_file / "sub")]) == 2
    _one_line_error(capsys.readouterr().err, "not a folder")
    blocked = tmp_path / "blocked"
    (blocked / "tiny_fp32.tflite").mkdir(parents=True)
    assert main(base + ["--out", str(blocked), "--force"]) == 2
    _one_line_error(capsys.readouterr().err, blocked / "tiny_fp32.tflite", "is a folder")
    assert main(base + ["--out", "/proc/edgetrunc-cannot-exist"]) == 2
    _one_line_error(capsys.readouterr().err, "/proc/edgetrunc-cannot-exist")
    fresh = tmp_path / "new" / "deeper"
    assert main(base + ["--out", str(fresh)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in fresh.iterdir()) == ["manifest.json", "tiny_fp32.tflite"]
    before = tiny_keras.read_bytes()
    assert main(base + ["--out", str(fresh)]) == 2  # exists, no --force
    _one_line_error(capsys.readouterr().err, "--force")
    assert tiny_keras.read_bytes() == before


# the command line's safety net ----------------------------------------------------------------

def test_file_system_errors_end_in_one_line(monkeypatch, capsys):
    from edgetrunc.cli import bench

    def full_disk(args):
        raise OSError(28, "No space left on device", "/data/out.json")

    monkeypatch.setattr(bench, "run", full_disk)
    assert main(["bench", "a.tflite"]) == 2
    _one_line_error(capsys.readouterr().err, "/data/out.json: No space left on device")


@pytest.mark.parametrize("argv", [
    ["infer", "a.tflite", "x.png", "--threads", "0"],
    ["bench", "a.tflite", "--runs", "0"],
    ["bench", "a.tflite", "--threads", "-1"],
    ["bench", "a.tflite", "--batch", "0"],
    ["parity", "m.keras", "a.tflite", "--samples", "0"],
    ["evaluate", "m.tflite", "--max-pairs", "-2"],
    ["train", "--epochs", "0"],
    ["train", "--payload", "nan"],
])
def test_zero_and_negative_counts_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_negative_warmup_is_one_line(tflite, capsys):
    assert main(["-q", "bench", str(tflite), "--warmup", "-1"]) == 2
    _one_line_error(capsys.readouterr().err, "--warmup")


def test_file_names_with_line_breaks_keep_errors_on_one_line(tmp_path, tflite, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "bad\nname.png").write_text("not an image")
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(folder / "good\nname.png")
    assert main(["-q", "infer", str(tflite), str(folder / "bad\nname.png")]) == 2
    _one_line_error(capsys.readouterr().err, "bad\\nname.png: not an image")
    assert main(["-q", "infer", str(tflite), str(folder)]) == 0
    err = capsys.readouterr().err
    assert "error:" not in err and "skipped 1 file(s): bad\\nname.png (not an image" in err
    assert main(["-q", "evaluate", str(folder / "bad\nname.png")]) == 2
    _one_line_error(capsys.readouterr().err, "bad\\nname.png")


# the command line's bounds, streams and names -------------------------------------------------

HUGE = "99999999999999999999"


@pytest.mark.parametrize("command, param, flag", [("bench", "runs", "--runs"),
                                                  ("evaluate", "max_pairs", "--max-pairs"),
                                                  ("bench", "max_pairs", "max_pairs")])
def test_library_errors_name_the_flag_of_their_parameter(command, param, flag, monkeypatch, capsys):
    import importlib

    def refuse(args):
        raise InputError(f"{param}: expected a positive integer; got 0", param=param)

    monkeypatch.setattr(importlib.import_module(f"edgetrunc.cli.{command}"), "run", refuse)
    argv = [command, "a.tflite"]
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, f"edgetrunc {command}: error: {flag}: expected a positive")


def test_the_library_names_parameters_not_flags(tflite):
    from edgetrunc.runtime.bench import bench_artifacts

    with pytest.raises(InputError, match="^runs: expected a positive integer") as exc:
        bench_artifacts([tflite], runs=0)
    assert exc.value.param == "runs"


@pytest.mark.parametrize("argv", [
    ["infer", "a.tflite", "x.png", "--threads", "{too_many}"],
    ["run", "a.tflite", "in.npz", "--out", "o.npz", "--threads", "{too_many}"],
    ["parity", "m.keras", "a.tflite", "--threads", "{too_many}"],
    ["bench", "a.tflite", "--threads", "1,{too_many}"],
    ["bench", "a.tflite", "--threads", HUGE],
])
def test_thread_counts_are_bounded_by_the_machine(argv, capsys):
    too_many = str(4 * (os.cpu_count() or 1) + 1)
    with pytest.raises(SystemExit) as exc:
        main([arg.replace("{too_many}", too_many) for arg in argv])
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err, "--threads", "CPUs here")


def test_thread_counts_up_to_the_bound_are_accepted():
    from edgetrunc.cli import build_parser

    most = 4 * (os.cpu_count() or 1)
    assert build_parser().parse_args(["infer", "a.tflite", "x.png", "--threads", str(most)]).threads == most
    assert build_parser().parse_args(["bench", "a.tflite", "--threads", f"1,{most}"]).threads == [1, most]


@pytest.mark.parametrize("argv", [
    ["parity", "m.keras", "a.tflite", "--samples", HUGE],
    ["parity", "m.keras", "a.tflite", "--samples", "1e9"],
    ["bench", "a.tflite", "--runs", HUGE],
    ["bench", "a.tflite", "--batch", HUGE],
    ["train", "--epochs", HUGE],
    ["evaluate", "m.tflite", "--max-pairs", HUGE],
    ["parity", "m.keras", "a.tflite", "--seed", "-1"],
    ["train", "--seed", "-1"],
    ["evaluate", "m.tflite", "--seed", HUGE],
])
def test_huge_counts_and_bad_seeds_are_one_line_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err, argv[-2])


@pytest.mark.parametrize("lines, code, expected", [(100_000, 0, 0), (1, 1, 1)])
def test_a_reader_that_goes_away_ends_the_command_quietly(lines, code, expected, monkeypatch, capsys):
    """Output into a pipe nobody reads: exit 0 (or the command's own code once it finished),
    no 'Broken pipe' line and nothing left to fail at exit."""
    import sys

    from edgetrunc.cli import bench

    def print_table(args):
        for _ in range(lines):
            print("artifact  precision  threads")
        return code

    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = open(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(bench, "run", print_table)
    assert main(["bench", "a.tflite"]) == expected
    stream.close()
    assert capsys.readouterr().err == ""


def test_closed_and_broken_stdout_exit_quietly(tmp_path, tflite):
    import shlex
    import subprocess
    import sys

    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(image)
    edgetrunc = [sys.executable, "-m", "edgetrunc"]
    for command in (["-q", "infer", str(tflite), str(image), "--json"], ["bench", "--help"]):
        for redirect in (" | head -c 0", " >&-"):
            result = subprocess.run(["bash", "-c", "set -o pipefail; " + shlex.join(edgetrunc + command)
                                     + redirect], capture_output=True, text=True, timeout=120)
            assert (result.returncode, result.stderr) == (0, ""), (command, redirect)


def test_control_characters_in_names_are_escaped_in_error_lines(tmp_path, tflite, capsys):
    odd = tmp_path / "bad\x1b[31mname.png"
    odd.write_bytes(b"not an image")
    assert main(["-q", "infer", str(tflite), str(odd)]) == 2
    line = _one_line_error(capsys.readouterr().err, "bad\\x1b[31mname.png: not an image")
    assert "\x1b" not in line
    missing = tmp_path / "in\x07puts.npz"
    assert main(["-q", "run", str(tflite), str(missing), "--out", str(tmp_path / "o.npz")]) == 2
    line = _one_line_error(capsys.readouterr().err, "in\\x07puts.npz")
    assert "\x07" not in line
    with pytest.raises(SystemExit):
        main(["convert", "m.keras", "--tflite", "fp\x1b[2J"])
    err = capsys.readouterr().err
    assert "\x1b" not in err and "unknown precision fp\\x1b[2J" in err
