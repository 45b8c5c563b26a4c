"""The settings of one training run: `TrainConfig`, validated when it is made (no TensorFlow).

`TrainConfig` holds every argument of `edgetrunc.train.train` and checks them in
`__post_init__`, raising `InputError` naming the parameter (in its command-line spelling,
which the command prints as it is); the payload is checked, the curriculum parsed into its
payload stages (`stages`) and the model arguments into a dict. The helpers that parse a
curriculum and `KEY=VALUE` model arguments, check the output path and name the training
record beside a model live here too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgetrunc._io import check_run_paths, require_writable_dir
from edgetrunc.data.dataset import check_payload
from edgetrunc.data.splits import DEFAULT_FRACTIONS
from edgetrunc.data.stego_cache import DEFAULT_MESSAGES, StegoSettings
from edgetrunc.data.stream import DEFAULT_SHUFFLE_BUFFER, STREAM_MODES
from edgetrunc.errors import InputError
from edgetrunc.train.strategy import check_strategy

LR_SCHEDULES = ("cosine", "plateau", "constant")
BN_REESTIMATE = ("epoch", "end", "none")
EVAL_STRIDE = 128
MAX_SHUFFLE_BUFFER = 8192  # pairs held by a streamed epoch's shuffle buffer


@dataclass
class TrainConfig:
    """Every setting of a training run; see `edgetrunc.train.train` for their meaning."""

    model: str = "tlunet"
    covers: object = "embedded"
    payload: float = 0.4
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    patience: int = 8
    curriculum: object = None
    stage_epochs: int = 2
    max_tiles: int | None = None
    stride: int | None = None
    strategy: str = "default"
    out: object = "models/tlunet.keras"
    seed: int = 0
    force: bool = False
    time_budget: float | None = None
    model_kwargs: object = None
    lr_schedule: str = "cosine"
    eval_stride: int | None = EVAL_STRIDE
    max_eval_pairs: int | None = None
    bn_reestimate: str = "epoch"
    fractions: tuple = DEFAULT_FRACTIONS
    augment: bool = True
    frozen_bn_fraction: float = 0.0
    command: str | None = None
    embedding: str = "lsbm"
    messages: int = DEFAULT_MESSAGES
    stego_cache: object = None
    workers: int | None = None
    stream: str = "auto"
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    stages: list = field(init=False, default_factory=list)
    stego: StegoSettings = field(init=False, default=None)

    def __post_init__(self):
        self.payload = check_payload(self.payload)
        if int(self.epochs) < 1:
            raise InputError(f"epochs: expected >= 1; got {self.epochs}", param="epochs")
        if int(self.batch_size) < 1:
            raise InputError(f"batch_size: expected >= 1; got {self.batch_size}", param="batch_size")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr: expected a positive learning rate; got {self.lr}", param="lr")
        check_strategy(self.strategy)
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"lr_schedule: expected one of {', '.join(LR_SCHEDULES)}; "
                             f"got {self.lr_schedule!r}", param="lr_schedule")
        if self.bn_reestimate not in BN_REESTIMATE:
            raise InputError("bn_reestimate: expected epoch, end or none; "
                             f"got {self.bn_reestimate!r}", param="bn_reestimate")
        if not 0 <= self.frozen_bn_fraction < 1:
            raise InputError("frozen_bn: expected a fraction in [0, 1); "
                             f"got {self.frozen_bn_fraction}", param="frozen_bn")
        if self.time_budget is not None and not self.time_budget > 0:
            raise InputError(f"time_budget: expected minutes > 0; got {self.time_budget}", param="time_budget")
        if self.stream not in STREAM_MODES:
            raise InputError(f"stream: expected one of {', '.join(STREAM_MODES)}; "
                             f"got {self.stream!r}", param="stream")
        if not 1 <= int(self.shuffle_buffer) <= MAX_SHUFFLE_BUFFER:
            raise InputError(f"shuffle_buffer: expected 1 to {MAX_SHUFFLE_BUFFER} pairs (1 GiB of "
                             f"256x256 gray pairs); got {self.shuffle_buffer}", param="shuffle_buffer")
        self.stages = parse_curriculum(self.curriculum, self.payload)
        if self.out is not None:  # every output against the others and the covers, first
            check_run_paths({"out": self.out, "record": record_path(self.out),
                             "stego_cache": self.stego_cache}, {"covers": None if self.covers == "embedded" else self.covers},
                            folders=("stego_cache",))
        messages = self.messages  # a run draws one per epoch: more are never used
        if isinstance(messages, int) and not isinstance(messages, bool):
            messages = min(messages, int(self.epochs))
        self.stego = StegoSettings(self.embedding, self.stego_cache, self.workers, messages)
        self.model_kwargs = parse_model_args(self.model_kwargs.items()
                                             if isinstance(self.model_kwargs, dict)
                                             else self.model_kwargs)


def record_path(model_path) -> Path:
    """`models/tlunet.keras` -> `models/tlunet.training.json`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name[: -len(model_path.suffix)] + ".training.json")


def parse_curriculum(curriculum, payload: float) -> list[float]:
    """`"1.0,0.7,0.4"` (or a list) -> payload stages ending at `payload`."""
    if curriculum in (None, "", []):
        return [payload]
    items = curriculum.split(",") if isinstance(curriculum, str) else list(curriculum)
    try:
        stages = [float(item) for item in items if str(item).strip()]
    except ValueError:
        raise InputError(f"curriculum: expected payloads like 1.0,0.7,0.4; got {curriculum!r}", param="curriculum") from None
    for value in stages:
        if not 0 < value <= 1:
            raise InputError(f"curriculum: payload {value} outside (0, 1] bits per pixel", param="curriculum")
    if any(b > a for a, b in zip(stages, stages[1:])):
        raise InputError(f"curriculum: payloads must go down to the target; got {curriculum!r}", param="curriculum")
    if stages[-1] < payload:
        raise InputError(f"curriculum: ends at {stages[-1]} below the target payload {payload}", param="curriculum")
    if stages[-1] != payload:
        stages.append(payload)
    return stages


def parse_model_args(items) -> dict:
    """`["front_end=srm6", "width=2"]` -> `{"front_end": "srm6", "width": 2}`."""
    kwargs = {}
    for item in items or ():
        if isinstance(item, tuple):
            key, value = item
        else:
            if "=" not in item:
                raise InputError(f"model_arg: expected KEY=VALUE; got {item!r}", param="model_arg")
            key, value = item.split("=", 1)
            value = _literal(value)
        kwargs[key.strip()] = value
    return kwargs


def _literal(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    return text


def checked_keras_output(out, force: bool) -> Path:
    """`out` as a Path, once it is a `.keras` path that may be written (`force` to replace)."""
    out = Path(out)
    if out.suffix != ".keras":
        raise InputError(f"{out}: output must end in .keras")
    if out.exists() and out.is_dir():
        raise InputError(f"{out}: is a folder; expected a .keras file path")
    if out.exists() and not force:
        raise InputError(f"{out}: exists; pass --force to replace it")
    require_writable_dir(out.parent if str(out.parent) else Path("."))
    if not os.access(out.parent if str(out.parent) else ".", os.W_OK):
        raise InputError(f"{out.parent}: output folder is not writable")
    return out
