"""Covers, 256x256 tiles, LSB-matching stego and source-disjoint splits (no TensorFlow)."""

from edgetrunc.data.images import load_image, tile_image, tile_positions, to_model_input
from edgetrunc.data.stego import embed_lsb_matching

__all__ = ["load_image", "tile_image", "tile_positions", "to_model_input", "embed_lsb_matching"]
