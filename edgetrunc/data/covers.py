"""Cover photographs: the embedded default set and user folders of images (no TensorFlow).

A `Cover` is one source photograph as 8-bit pixels (grayscale `[H, W]`, or RGB `[H, W, 3]`
for an RGB model), with its name (the unit of the train / validation / test split), where it
came from, and whether it was once JPEG-compressed. The embedded default covers are the
photographs stored inside the installed scikit-image package (read straight from its data
folder, never downloaded); synthetic drawings, binary images and images under 256x256 are
left out. Covers are read for one model geometry (`channels`, `min_size` = its tile):
gray models get luma, RGB models get the color photos as they are and the gray ones
replicated into three equal channels; a photo smaller than the tile is skipped with one
warning line, and none left is an error naming the size. A user folder
holds PNG / PGM / TIFF / BMP / GIF / WebP files (lossless); JPEG and lossy WebP files are
accepted with a warning, unusable files are skipped with a warning (`load_cover_dir`).
Nothing is ever resized: resampling would destroy the +-1 signal a detector looks for.

JPEG history matters for steganalysis: a photo that was once JPEG-compressed keeps an
8x8 block structure that +-1 changes disturb, which makes it far easier to detect than a
never-compressed photo. `blockiness` measures that structure (mean absolute difference
across 8x8 block borders over the mean difference elsewhere; about 1.0 without it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgetrunc.data.images import (LOSSY_SUFFIXES, TILE, image_files, iter_folder_images, load_image, no_usable_image,
                                   lossy_format, report_skipped)
from edgetrunc import _log
from edgetrunc.errors import InputError

BLOCKINESS_JPEG = 1.05
BLOCKINESS_WINDOW = 2048

# name -> (file in skimage/data, what the picture is). Photographs only, each >= 256x256.
# Left out: synthetic drawings (logo, color wheel, chessboard, phantom), binary images
# (horse), images under 256 px (page, text, microaneurysms), the second motorcycle view
# (same scene as motorcycle_left) and the files that need a download (pooch).
EMBEDDED_PHOTOS = {
    "astronaut": ("astronaut.png", "astronaut Eileen Collins (NASA), color"),
    "brick": ("brick.png", "brick wall texture"),
    "camera": ("camera.png", "man with a camera"),
    "cell": ("cell.png", "microscopy of a cell"),
    "chelsea": ("chelsea.png", "Chelsea the cat, color"),
    "clock": ("clock_motion.png", "wall clock with motion blur"),
    "coffee": ("coffee.png", "cup of coffee, color"),
    "coins": ("coins.png", "Greek coins from Pompeii"),
    "grass": ("grass.png", "grass texture"),
    "gravel": ("gravel.png", "gravel texture"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "Hubble eXtreme Deep Field (NASA), color"),
    "immunohistochemistry": ("ihc.png", "immunohistochemistry stain, color"),
    "moon": ("moon.png", "surface of the moon"),
    "motorcycle": ("motorcycle_left.png", "motorcycle, left stereo view, color"),
    "retina": ("retina.jpg", "human retina, color"),
    "rocket": ("rocket.jpg", "SpaceX Falcon 9 launch, color"),
}


@dataclass
class Cover:
    """One source photograph as uint8 pixels `[H, W]` (grayscale) or `[H, W, 3]` (RGB).

    `jpeg_history` is True when the file is a JPEG or its pixels show the 8x8 block
    structure of an earlier JPEG compression (`blockiness >= 1.05`).
    """

    name: str
    pixels: np.ndarray = field(repr=False)
    origin: str = ""
    description: str = ""
    jpeg_file: bool = False
    blockiness: float = 1.0

    @property
    def jpeg_history(self) -> bool:
        return bool(self.jpeg_file or self.blockiness >= BLOCKINESS_JPEG)

    @property
    def shape(self):
        return tuple(self.pixels.shape)

    @property
    def note(self) -> str:
        if self.jpeg_file:
            return "JPEG file"
        if self.blockiness >= BLOCKINESS_JPEG:
            return f"once JPEG-compressed (8x8 blockiness {self.blockiness:.2f})"
        return f"no JPEG trace (8x8 blockiness {self.blockiness:.2f})"

    def describe(self) -> dict:
        """JSON-ready description (no pixels)."""
        return {"name": self.name, "origin": self.origin, "height": int(self.pixels.shape[0]),
                "width": int(self.pixels.shape[1]), "jpeg_history": self.jpeg_history,
                "blockiness": round(float(self.blockiness), 3), "note": self.note}


def blockiness(pixels: np.ndarray, block: int = 8) -> float:
    """Mean |difference| across `block` borders over the mean |difference| elsewhere.

    About 1.0 for a never-compressed photo; above 1 when JPEG's 8x8 blocks left a trace.
    Measured on the top-left `BLOCKINESS_WINDOW` pixels at most (block-aligned), so a
    large photo costs bounded memory.
    """
    p = np.asarray(pixels[:BLOCKINESS_WINDOW, :BLOCKINESS_WINDOW], dtype=np.float64)
    border, inner = [], []
    for axis in (0, 1):
        diff = np.abs(np.diff(p, axis=axis))
        index = np.arange(diff.shape[axis])
        at_border = index % block == block - 1
        border.append(diff.take(index[at_border], axis=axis).mean())
        inner.append(diff.take(index[~at_border], axis=axis).mean())
    inner_mean = float(np.mean(inner))
    return float(np.mean(border)) / inner_mean if inner_mean > 0 else 1.0


def skimage_data_dir() -> Path:
    """The data folder of the installed scikit-image package (without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("covers 'embedded': scikit-image is not installed; "
                         "install edgetrunc[full] or pass a folder of cover images")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def embedded_covers(names=None, channels: int = 1, min_size: int = TILE) -> list[Cover]:
    """The photographs shipped inside scikit-image, as 8-bit `Cover`s (sorted by name).

    `names` selects a subset (default: all of `EMBEDDED_PHOTOS`); `channels` 1 (luma) or 3
    (RGB); photos under `min_size` on a side are left out with one warning line, and an
    `InputError` names the size when none is left.
    """
    folder = skimage_data_dir()
    names = sorted(EMBEDDED_PHOTOS) if names is None else list(names)
    covers, small = [], []
    for name in names:
        if name not in EMBEDDED_PHOTOS:
            raise InputError(f"embedded cover {name!r}: unknown; expected one of "
                             f"{', '.join(sorted(EMBEDDED_PHOTOS))}")
        filename, description = EMBEDDED_PHOTOS[name]
        path = folder / filename
        if not path.is_file():
            raise InputError(f"embedded cover {name!r}: {filename} is missing from the "
                             "installed scikit-image; pass a folder of cover images instead")
        pixels = load_image(path, min_size=0, warn_jpeg=False, channels=channels)
        if min(pixels.shape[:2]) < min_size:
            small.append(f"{name} ({pixels.shape[1]}x{pixels.shape[0]})")
            continue
        covers.append(Cover(name=name, pixels=pixels, origin=f"scikit-image:{filename}",
                            description=description,
                            jpeg_file=path.suffix.lower() in LOSSY_SUFFIXES,
                            blockiness=blockiness(pixels)))
    if small:
        _log.warn_once(f"embedded covers: skipped {len(small)} photo(s) smaller than the "
                  f"{min_size}x{min_size} model input: {', '.join(small)}")
    if not covers:
        raise InputError(f"embedded covers: no photo is at least {min_size}x{min_size} (the model "
                         "input; images are tiled, never resized); pass a folder of larger images")
    return covers


def load_cover_dir(path, min_size: int = TILE, channels: int = 1, keep=None) -> list[Cover]:
    """Every usable image in the folder `path` (not recursive), as `Cover`s sorted by name;
    `keep(cover)`, when given, is kept instead of each cover as it is read (a streamed
    training keeps a reference without pixels, so one photo at a time is in memory).

    The folder policy of `edgetrunc.data.images.image_files`: hidden files and subfolders
    are ignored; files that cannot be used (no image suffix, not an image, 16-bit, under
    `min_size`, ...) are skipped with one warning naming each and why; if none is usable,
    `InputError` lists them. JPEG (and lossy WebP) files are read with a warning. Two
    files with the same name without suffix are refused: the name decides the split.
    """
    folder = Path(path)
    files, skipped = image_files(folder, "cover folder")
    if not files and not skipped:
        raise InputError(f"{folder}: empty folder; expected PNG/PGM/TIFF cover images")
    covers, lossy = [], []
    for file, pixels in iter_folder_images(files, skipped, min_size, channels):
        kind = lossy_format(file)
        if kind:
            lossy.append(file.name)
        cover = Cover(name=file.stem, pixels=pixels, origin=str(file),
                      jpeg_file=kind == "JPEG", blockiness=blockiness(pixels))
        covers.append(keep(cover) if keep else cover)
    if not covers:
        error = no_usable_image(folder, skipped, "cover image")
        raise InputError(f"{error}; covers must be at least {min_size}x{min_size} pixels "
                         "(the model input; images are tiled, never resized)")
    by_name: dict = {}
    for cover in covers:
        by_name.setdefault(cover.name, []).append(Path(cover.origin).name)
    duplicates = {name: files for name, files in by_name.items() if len(files) > 1}
    if duplicates:
        name, same = sorted(duplicates.items())[0]
        raise InputError(f"{folder}: {', '.join(same)} share the photo name {name!r}; names "
                         "without suffix must be unique (the name decides the train/val/test "
                         "split); rename or remove all but one")
    report_skipped(folder, skipped)
    if lossy:
        _log.warn_once(f"{folder}: {len(lossy)} lossy cover(s) ({', '.join(lossy[:5])}"
                  f"{', ...' if len(lossy) > 5 else ''}); stego detectors expect lossless "
                  "covers and JPEG block traces make detection easier")
    return covers


def resolve_covers(covers="embedded", channels: int = 1, min_size: int = TILE) -> list[Cover]:
    """`"embedded"`, a folder path, or a list of `Cover` -> a list of `Cover` with `channels`
    (1 luma, 3 RGB), each at least `min_size` on a side."""
    if isinstance(covers, (list, tuple)):
        if not covers or not all(isinstance(c, Cover) for c in covers):
            raise InputError("covers: expected a non-empty list of Cover objects", param="covers")
        return [with_channels(c, channels) for c in covers]
    if covers is None or str(covers) == "embedded":
        return embedded_covers(channels=channels, min_size=min_size)
    return load_cover_dir(covers, min_size=min_size, channels=channels)


def with_channels(cover: Cover, channels: int) -> Cover:
    """`cover` with `channels` 1 (ITU-R 601 luma, as Pillow) or 3 (gray replicated), as needed."""
    has = 3 if cover.pixels.ndim == 3 else 1
    if has == channels:
        return cover
    from PIL import Image

    pixels = np.asarray(Image.fromarray(cover.pixels).convert("RGB" if channels == 3 else "L"))
    return replace(cover, pixels=pixels)
