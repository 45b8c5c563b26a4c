"""The `tf.data` pipeline of a streamed training epoch (cover folders larger than memory).

`stream_epoch_dataset` chains the stages: the read stage (`edgetrunc.data.stream.epoch_pairs`:
the worker's share of the tiles, photos in a seeded order, each read once and cut into its
tiles, each tile embedded or fetched from the stego cache and turned by one of the 8
rotations/flips) -> a bounded, seeded shuffle buffer of `shuffle_buffer` pairs (8-bit, 128 KiB
a pair of 256x256 gray tiles) -> batches of pairs (cover 2i and its stego 2i+1 side by
side, float32 in 0..255 as the model takes them) -> prefetch. At most the shuffle buffer,
one photo and the prefetched batches are in memory, whatever the size of the folder.
Imports TensorFlow inside the function.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.data.stream import DEFAULT_SHUFFLE_BUFFER, epoch_pairs
from edgetrunc.errors import InputError
from edgetrunc.train.strategy import worker_share

PREFETCH_BATCHES = 2
_READ_FAILURES: list = []  # InputErrors of the read stage, raised inside TensorFlow


def kept_failures(generate):
    """`generate` (a generator function that `tf.data` runs) with the `InputError` it raises
    kept for `read_failure`: TensorFlow shows it only as its own error."""
    def wrapped(*args):
        try:
            yield from generate(*args)
        except InputError as exc:
            _READ_FAILURES.append(exc)
            raise

    return wrapped


def read_failure():
    """The `InputError` the read stage last raised (a cover that vanished or changed), once;
    None when there was none."""
    failure = _READ_FAILURES[-1] if _READ_FAILURES else None
    _READ_FAILURES.clear()
    return failure


def shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle buffer."""
    entropy = [int(seed) & 0xFFFFFFFF, 5, int(epoch) & 0xFFFFFFFF]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def stream_epoch_dataset(tiles, batch_pairs: int, steps: int, payload: float, seed: int = 0,
                         epoch: int = 0, augment: bool = True, stego=None,
                         shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, worker: int = 0,
                         workers: int = 1, reads: list | None = None):
    """`steps` batches `(x float32 [2B, tile, tile, channels], y int64 [2B])` of worker
    `worker`'s share of the `StreamTiles` (tile i -> worker i mod `workers`), streamed.
    `reads` (a list) collects the photos the read stage has read, for tests."""
    import tensorflow as tf

    share = worker_share(tiles, worker, workers)
    size, channels = tiles.tile_size, tiles.channels
    images = 2 * int(batch_pairs)
    labels = tf.constant(np.tile(np.array([0, 1], np.int64), int(batch_pairs)))

    @kept_failures
    def read():
        yield from epoch_pairs(share, payload, seed, epoch, augment, stego, reads)

    pairs = tf.data.Dataset.from_generator(
        read, output_signature=tf.TensorSpec((2, size, size, channels), tf.uint8))
    pairs = pairs.shuffle(int(shuffle_buffer), seed=shuffle_seed(seed, epoch),
                          reshuffle_each_iteration=False)
    batches = pairs.batch(int(batch_pairs), drop_remainder=True).map(
        lambda p: (tf.cast(tf.reshape(p, (images, size, size, channels)), tf.float32), labels))
    batches = batches.take(int(steps)).apply(tf.data.experimental.assert_cardinality(int(steps)))
    return batches.prefetch(PREFETCH_BATCHES)
