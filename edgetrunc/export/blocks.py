"""Space-to-depth arithmetic shared by the TFLite and ONNX rewrites (numpy only).

Both formats pack 2x2 blocks of pixels into channels in the same order: channel
`(row in block * b + column in block) * C + c` (TFLite SPACE_TO_DEPTH; ONNX SpaceToDepth,
undone by DepthToSpace in "DCR" mode). `space_to_depth_kernel` turns a convolution over
pixels into one over blocks; `window_taps` marks which packed channels a pooling window
starting at a block covers.
"""

from __future__ import annotations

import numpy as np

BLOCK = 2


def space_to_depth_kernel(kernel: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """`[Cout, kh, kw, Cin]` taps (odd kh, kw) -> `[block^2 * Cout, ch, cw, block^2 * Cin]`
    over blocks, in the space-to-depth channel order (row in block, column, channel)."""
    c_out, kh, kw, c_in = kernel.shape
    reach_h, reach_w = kh // 2, kw // 2
    cells_h, cells_w = -(-reach_h // block), -(-reach_w // block)
    packed = np.zeros((block * block * c_out, 2 * cells_h + 1, 2 * cells_w + 1,
                       block * block * c_in), np.float32)
    for oy in range(block):
        for ox in range(block):
            rows = slice((oy * block + ox) * c_out, (oy * block + ox + 1) * c_out)
            for i in range(kh):
                cell_y, dy = divmod(oy + i - reach_h, block)
                for j in range(kw):
                    cell_x, dx = divmod(ox + j - reach_w, block)
                    cols = slice((dy * block + dx) * c_in, (dy * block + dx + 1) * c_in)
                    packed[rows, cell_y + cells_h, cell_x + cells_w, cols] = kernel[:, i, j, :]
    return packed


def window_taps(kh: int, kw: int, block: int, channels: int) -> np.ndarray:
    """`[ceil(kh / b), ceil(kw / b), b * b * C]`: 1 where a window of `kh x kw` pixels starting
    at a block's first pixel covers packed channel (row in block, column, channel), else 0."""
    taps = np.zeros((-(-kh // block), -(-kw // block), block * block * channels), np.float32)
    for i in range(kh):
        cell_y, dy = divmod(i, block)
        for j in range(kw):
            cell_x, dx = divmod(j, block)
            start = (dy * block + dx) * channels
            taps[cell_y, cell_x, start:start + channels] = 1.0
    return taps
