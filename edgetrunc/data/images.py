"""Image loading, image folders and square tiling for covers and inference inputs (no TensorFlow).

`load_image` returns an 8-bit grayscale array `[H, W]` of the pixels as stored (or, with
`channels=3`, RGB `[H, W, 3]`), or raises `InputError` naming the file and the reason. 8-bit
gray, color (RGB, CMYK, YCbCr), palette, 1-bit and alpha images are accepted: for a grayscale
model color converts to ITU-R 601 luma (Pillow's "L"); for an RGB model a gray photo is
replicated into three equal channels (Pillow's "RGB"); alpha is dropped. Nothing is ever resized, rotated, color-managed or re-quantized: a
steganalysis detector must see the pixels as stored, so the EXIF orientation tag and ICC
profiles are ignored, and 16-bit, 32-bit and float images, multi-frame files (animated GIF,
multi-page TIFF; a camera's multi-picture JPEG is read as its first, main picture) and
images over `MAX_PIXELS` are refused. The format is read from the content, so the suffix's
case does not matter.

`image_files` lists the images of a folder and `iter_folder_images` reads them with the one
folder policy every command shares: hidden files and subfolders are ignored, and a file
that is not a usable image is skipped and reported (`report_skipped`, one warning line
naming each file and why); only a folder with no usable image is an error.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np

from edgetrunc._io import open_regular
from edgetrunc._text import printable
from edgetrunc.errors import InputError, first_line

TILE = 256
LOSSLESS_SUFFIXES = (".png", ".pgm", ".pnm", ".ppm", ".pbm", ".tif", ".tiff", ".bmp", ".gif")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = LOSSLESS_SUFFIXES + LOSSY_SUFFIXES + (".webp",)
# Pillow's decompression-bomb limit (its warning level, 89.5 M pixels), checked from the
# header before decoding: an 89-megapixel image needs 89 MB as 8-bit gray (268 MB while
# converting from RGB); a larger one, however small its file, is refused unread.
MAX_PIXELS = 89_478_485

_EIGHT_BIT_MODES = {"L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "1", "PA", "RGBX"}
# raw modes of 16/32-bit samples that Pillow hands out as an 8-bit mode (e.g. 16-bit RGB PNG)
_DEEP_RAWMODE = re.compile(r"^(L|LA|RGB|RGBA|RGBX|CMYK|I|F);(16|32)")


def load_image(path, min_size: int = TILE, warn_jpeg: bool = True, channels: int = 1) -> np.ndarray:
    """Read `path` as uint8 grayscale `[H, W]` (`channels=3`: RGB `[H, W, 3]`), at least
    `min_size` on each side.

    Raises `InputError` (one line naming the file) for anything that is not an 8-bit,
    single-frame image of at least `min_size` x `min_size` pixels. Lossy files (JPEG, lossy
    WebP, JPEG-compressed TIFF) are read with a `UserWarning` unless `warn_jpeg=False`.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(f"{path}: {_link_problem(path)}")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an image")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file, expected an image")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes), expected an image")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_regular(path, "image") as handle, Image.open(handle) as img:
                _check_image(path, img)
                mode = "RGB" if channels == 3 else "L"
                converted = img.convert(mode) if img.mode != mode else img
                pixels = np.asarray(converted, dtype=np.uint8).copy()
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (removed while it was read)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (unknown or unsupported format); expected PNG, "
                         "TIFF, PGM/PPM, BMP, GIF, WebP or JPEG") from None
    except Image.DecompressionBombError:
        raise InputError(f"{path}: over {MAX_PIXELS / 1e6:.0f} megapixels; "
                         "split it into smaller images first") from None
    except MemoryError:
        raise InputError(f"{path}: too large to decode in the available memory") from None
    except Exception as exc:  # noqa: BLE001  (decoders raise OSError, SyntaxError, struct.error, ...)
        raise InputError(f"{path}: unreadable image ({first_line(exc)})") from None
    lossy = lossy_format(path) if warn_jpeg else None
    if lossy:
        warnings.warn(f"{path}: {lossy} input; stego detectors expect lossless covers",
                      stacklevel=2)
    height, width = pixels.shape[:2]
    if height < min_size or width < min_size:
        raise InputError(f"{path}: {width}x{height} pixels; expected at least {min_size}x{min_size} "
                         "(images are tiled, never resized)")
    return pixels


def _link_problem(path: Path) -> str:
    """Why a symbolic link leads to no file: a loop, or a missing target."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
    return "broken symbolic link"


def _check_image(path: Path, img) -> None:
    """Refuse what cannot be read as 8-bit pixels without changing them."""
    n_frames = getattr(img, "n_frames", 1)
    if n_frames > 1 and img.format != "MPO":  # MPO: a camera JPEG plus previews; frame 0 is the photo
        raise InputError(f"{path}: multi-frame image ({n_frames} frames: animated or multi-page); "
                         "expected a single-frame image")
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise InputError(f"{path}: {width}x{height} is over {MAX_PIXELS / 1e6:.0f} megapixels; "
                         "split it into smaller images first")
    mode = img.mode
    deep = _stored_bit_depth(img)
    if mode not in _EIGHT_BIT_MODES or deep:
        raise InputError(f"{path}: {_describe_mode(mode, deep)} image; expected 8 bits per sample "
                         "(edgetrunc never re-quantizes pixels; convert it to 8-bit yourself)")


def _stored_bit_depth(img) -> int | None:
    """16 or 32 when the file stores deeper samples than its Pillow mode says, else None."""
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args
                                                      and isinstance(args[0], str) else "")
        match = _DEEP_RAWMODE.match(rawmode)
        if match:
            return int(match.group(2))
    return None


def _describe_mode(mode: str, deep: int | None = None) -> str:
    if mode == "F":
        return "32-bit float"
    kind = "grayscale" if mode == "L" or mode.startswith("I") else mode
    if deep:
        return f"{deep}-bit {kind}"
    if mode.startswith("I;16"):
        return "16-bit grayscale"
    if mode == "I":
        return "32-bit integer"
    return f"mode {mode}"


def lossy_format(path) -> str | None:
    """"JPEG", "WebP" or "JPEG-compressed TIFF" when the content is lossy (whatever the suffix)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return None
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        from PIL import Image

        try:
            with Image.open(path) as img:
                compression = img.info.get("compression")
        except Exception:  # noqa: BLE001  (load_image reports unreadable files)
            return None
        return "JPEG-compressed TIFF" if compression in ("jpeg", "tiff_jpeg") else None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        offset = 12
        while offset + 8 <= len(head):  # chunks: fourcc, little-endian size, padded data
            fourcc = head[offset:offset + 4]
            if fourcc in (b"VP8 ", b"VP8L"):
                return "WebP" if fourcc == b"VP8 " else None
            size = int.from_bytes(head[offset + 4:offset + 8], "little")
            offset += 8 + size + (size & 1)
        return "WebP"
    return None


def image_files(folder, what: str = "folder of images") -> tuple[list[Path], list[str]]:
    """`(candidate image files sorted by name, skipped notes)` of `folder` (not recursive).

    Hidden files (`.DS_Store`, `._photo.png`) and subfolders are ignored; other files
    without an image suffix (any case) are noted as skipped. Raises `InputError` when the
    folder is missing, not a folder, or unreadable.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such {what}")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; expected a {what}")
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the {what} ({exc.strerror})") from None
    files, skipped = [], []
    for entry in entries:
        if entry.name.startswith(".") or entry.is_dir():
            continue
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{printable(entry.name)} (not an image suffix)")
            continue
        if _special(entry):
            skipped.append(f"{printable(entry.name)} (not a regular file: a FIFO, device or "
                           "socket)")
            continue
        files.append(entry)
    return files, skipped


def _special(path: Path) -> bool:
    """Whether `path` is (or links to) a FIFO, device or socket; never opened to find out
    (a broken link is left for `load_image` to name)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def iter_folder_images(files, skipped: list, min_size: int = TILE, channels: int = 1):
    """Yield `(path, pixels)` for each file that `load_image` reads; note the others in `skipped`."""
    for path in files:
        try:
            pixels = load_image(path, min_size=min_size, warn_jpeg=False, channels=channels)
        except InputError as exc:
            reason = str(exc)
            prefix = f"{path}: "
            reason = reason[len(prefix):] if reason.startswith(prefix) else reason
            skipped.append(printable(f"{path.name} ({reason.split('; expected')[0]})"))
            continue
        yield path, pixels


def summarize_skipped(skipped: list, limit: int = 24) -> str:
    """The first `limit` skipped notes joined by '; ', then how many more there are."""
    shown = "; ".join(skipped[:limit])
    return shown + (f"; and {len(skipped) - limit} more" if len(skipped) > limit else "")


def report_skipped(folder, skipped: list) -> None:
    """One warning line naming every skipped file of `folder` and why (nothing if none)."""
    if skipped:
        from edgetrunc import _log

        _log.warn_once(printable(f"{folder}: skipped {len(skipped)} file(s): {summarize_skipped(skipped)}"))


def no_usable_image(folder, skipped: list, what: str = "image") -> InputError:
    """The error for a folder without a single usable image."""
    if not skipped:
        return InputError(f"{folder}: empty folder; expected {what}s "
                          f"({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)})")
    return InputError(f"{folder}: no usable {what}; skipped {len(skipped)} file(s): {summarize_skipped(skipped)}")


def tile_positions(height: int, width: int, size: int = TILE, stride: int | None = None):
    """Top-left `(y, x)` of every full `size` tile, row by row (leftover border dropped)."""
    stride = stride or size
    return [(y, x) for y in range(0, height - size + 1, stride)
            for x in range(0, width - size + 1, stride)]


def tile_image(pixels: np.ndarray, size: int = TILE, stride: int | None = None):
    """Split `[H, W]` (or `[H, W, C]`) into full `size x size` tiles; returns
    `(tiles [N, size, size] (or [N, size, size, C]), positions)`.

    Tiles are never resized: resampling would destroy a +-1 stego signal.
    """
    positions = tile_positions(pixels.shape[0], pixels.shape[1], size, stride)
    tiles = np.stack([pixels[y:y + size, x:x + size] for y, x in positions]) if positions else (
        np.zeros((0, size, size, *pixels.shape[2:]), pixels.dtype))
    return tiles, positions


def to_model_input(tiles: np.ndarray) -> np.ndarray:
    """uint8 `[N, H, W]` gray tiles -> float32 `[N, H, W, 1]` in 0..255 (the training
    preprocessing); `[N, H, W, C]` tiles keep their channels."""
    tiles = np.asarray(tiles)
    if tiles.ndim == 2:
        tiles = tiles[None]
    return tiles.astype(np.float32) if tiles.ndim == 4 else tiles.astype(np.float32)[..., None]
