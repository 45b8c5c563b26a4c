"""Covers, square tiles at the model's geometry, LSB-matching stego and source-disjoint splits
(no TensorFlow)."""

from edgetrunc.data.covers import Cover, embedded_covers, load_cover_dir, resolve_covers
from edgetrunc.data.dataset import (PairSet, TrainingTiles, load_pairs, pair_batches,
                                    training_tiles)
from edgetrunc.data.geometry import ImageGeometry, image_geometry
from edgetrunc.data.images import load_image, tile_image, tile_positions, to_model_input
from edgetrunc.data.splits import split_sources
from edgetrunc.data.stego import embed_lsb_matching

__all__ = ["Cover", "ImageGeometry", "PairSet", "TrainingTiles", "embed_lsb_matching",
           "embedded_covers", "image_geometry", "load_cover_dir", "load_image", "load_pairs", "pair_batches", "resolve_covers",
           "split_sources", "tile_image", "tile_positions", "to_model_input", "training_tiles"]
