"""The settings of one training run: `TrainConfig`, validated when it is made (no TensorFlow).

`TrainConfig` is the one place the settings of `edgetrunc.train.train` are written: each
field carries its default, its meaning and its command-line flag (`edgetrunc._options`), from
which `edgetrunc train` declares its options. `__post_init__` checks them, raising
`InputError` naming the parameter by its field name (the command line shows it as its flag);
the payload is checked, the curriculum parsed into its payload stages (`stages`), the model
arguments into a dict and the stego parameters into `StegoSettings` (`stego`). The helpers
that parse a curriculum and `KEY=VALUE` model arguments, check the output path and name the
training record beside a model live here too.
"""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from edgetrunc._io import check_run_paths, require_writable_dir
from edgetrunc._options import default_of, flag_names, option, positive_int
from edgetrunc._options import payload as payload_text, seed as seed_text
from edgetrunc.data.dataset import check_payload
from edgetrunc.data.splits import DEFAULT_FRACTIONS
from edgetrunc.data.stego_cache import StegoSettings, stego_option
from edgetrunc.data.stream import DEFAULT_SHUFFLE_BUFFER, STREAM_MODES
from edgetrunc.errors import InputError
from edgetrunc.train.strategy import check_strategy

LR_SCHEDULES = ("cosine", "plateau", "constant")
BN_REESTIMATE = ("epoch", "end", "none")
EVAL_STRIDE = 128
MAX_SHUFFLE_BUFFER = 8192  # pairs held by a streamed epoch's shuffle buffer


@dataclass
class TrainConfig:
    """Every setting of a training run, each with its default and meaning (`settings_doc`)."""

    model: str = option("tlunet", "registered model name")
    covers: object = option("embedded", "'embedded' (scikit-image photos), a folder of "
                            "PNG/PGM/TIFF cover images, or (in Python) a list of `Cover`")
    payload: float = option(0.4, "target LSB-matching payload in bits per pixel, in (0, 1]",
                            type=payload_text)
    epochs: int = option(30, "maximum number of epochs (all stages together)", type=positive_int)
    batch_size: int = option(16, "pairs per batch; each pair is a cover and its stego, so a "
                             "batch holds 2 * batch_size images", type=positive_int)
    lr: float = option(1e-3, "initial learning rate (Adam)", type=float)
    patience: int = option(8, "early stopping after this many epochs at the target payload "
                           "without a better validation P_E (with a frozen batch-norm phase, "
                           "that phase starts then instead, and a second run of patience "
                           "epochs ends it)", type=positive_int)
    curriculum: object = option(None, "payload schedule from high to the target, e.g. "
                                "'1.0,0.7,0.4'; every stage but the last lasts stage_epochs "
                                "epochs", type=str)
    stage_epochs: int = option(2, "epochs per curriculum stage before the target payload",
                               type=positive_int)
    max_tiles: int | None = option(None, "use at most this many training tiles (round-robin "
                                   "over photos; quick runs)", type=positive_int)
    stride: int | None = option(None, "training tile stride in pixels (default: the model's "
                                "input size, non-overlapping; a quarter tile gives 16x more "
                                "tiles)", type=positive_int)
    strategy: str = option("default", "tf.distribute strategy: default, mirrored, multiworker "
                           "(several machines, the cluster from TF_CONFIG; each worker trains "
                           "on its share of the tiles and only the chief writes the output) or "
                           "one:DEVICE")
    out: object = option("models/tlunet.keras", "output .keras path; the training record goes "
                         "beside it (<name>.training.json)")
    seed: int = option(0, "random seed of the split, the tiles, the messages, the augmentation "
                       "and the weights", type=seed_text)
    force: bool = option(False, "replace an existing output", action="store_true")
    time_budget: float | None = option(None, "wall-time budget in minutes; no epoch starts that "
                                       "would overrun it", type=float, metavar="MIN")
    model_kwargs: object = option(None, "model builder argument KEY=VALUE, repeatable (e.g. "
                                  "front_end=srm6, width=2; in Python a dict or a list)",
                                  flag="--model-arg", action="append", cli_default=[],
                                  metavar="KEY=VALUE")
    lr_schedule: str = option("cosine", "learning-rate schedule: cosine (to 1%% of lr over the "
                              "planned epochs), plateau (halve after max(2, patience // 3) "
                              "epochs without improvement) or constant", choices=LR_SCHEDULES)
    eval_stride: int | None = option(EVAL_STRIDE, "tile stride of the validation and test tiles",
                                     type=positive_int)
    max_eval_pairs: int | None = option(None, "use at most this many validation and test pairs "
                                        "(quick runs)", type=positive_int)
    bn_reestimate: str = option("epoch", "re-estimate the batch-norm statistics on training "
                                "tiles after every epoch, before validation (epoch); once "
                                "after training, kept only when the validation P_E does not "
                                "get worse (end); or never (none)", choices=BN_REESTIMATE)
    fractions: tuple = option(DEFAULT_FRACTIONS, "train / validation / test fractions of the "
                              "photos", flag=None)
    augment: bool = option(True, "random rotations/flips of the training tiles", flag=None)
    frozen_bn_fraction: float = option(0.0, "last fraction of the planned epochs at the target "
                                       "payload trained with batch normalization frozen in "
                                       "inference mode, after re-estimating its statistics",
                                       flag="--frozen-bn", type=float, metavar="FRACTION")
    command: str | None = option(None, "the command line that ran this training (kept in the "
                                 "record)", flag=None)
    embedding: str = stego_option("embedding")
    messages: int = stego_option("messages")
    stego_cache: object = stego_option("stego_cache")
    workers: int | None = stego_option("workers")
    stream: str = option("auto", "read the training tiles from the cover files every epoch "
                         "instead of holding them in memory (auto: a cover folder over 64 MiB "
                         "of decoded pixels)", choices=STREAM_MODES)
    shuffle_buffer: int = option(DEFAULT_SHUFFLE_BUFFER, "pairs in the shuffle buffer of a "
                                 "streamed epoch", type=positive_int, metavar="PAIRS")
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
            raise InputError("frozen_bn_fraction: expected a fraction in [0, 1); "
                             f"got {self.frozen_bn_fraction}", param="frozen_bn_fraction")
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
        self.stego = StegoSettings.of_run(self.embedding, self.stego_cache, self.workers,
                                          self.messages, epochs=self.epochs)
        self.model_kwargs = parse_model_args(self.model_kwargs.items()
                                             if isinstance(self.model_kwargs, dict)
                                             else self.model_kwargs)


def settings_doc(cls=TrainConfig) -> str:
    """`Args:` lines of every setting of `cls` with its default and, where it has one, its
    command-line flag: the docstring section of a function that takes them as keywords."""
    flags = flag_names(cls)
    lines = ["Args:"]
    for f in dataclasses.fields(cls):
        if f.init and "option" in f.metadata:
            notes = ([f"default {default_of(f)!r}"] if default_of(f) is not None else [])
            notes += [flags[f.name]] if f.name in flags else []
            text = f.metadata["option"]["help"].replace("%%", "%")
            text += f" ({'; '.join(notes)})" if notes else ""
            lines += textwrap.wrap(f"{f.name}: {text}.", 88, initial_indent="    ",
                                   subsequent_indent="        ")
    return "\n".join(lines)


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
                raise InputError(f"model_kwargs: expected KEY=VALUE; got {item!r}", param="model_kwargs")
            key, value = item.split("=", 1)
            value = _literal(value)
        kwargs[key.strip()] = value
    return kwargs


def _literal(text):
    if "," in text:  # input_shape=128,128,1
        return tuple(_literal(part.strip()) for part in text.split(",") if part.strip())
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
        raise InputError(f"{out}: exists; pass force=True to replace it")
    require_writable_dir(out.parent if str(out.parent) else Path("."))
    if not os.access(out.parent if str(out.parent) else ".", os.W_OK):
        raise InputError(f"{out.parent}: output folder is not writable")
    return out
