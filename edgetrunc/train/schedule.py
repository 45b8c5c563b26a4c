"""The epoch schedule of a training run, in pure Python (no TensorFlow, no model).

`Schedule` decides, epoch by epoch: the curriculum stage and its payload, the learning rate
(cosine to 1% of the initial rate over the planned epochs at the target payload, halving on
a plateau, or constant), when batch normalization is frozen for the final phase, which epoch
is the best so far (`selection_score` of its validation report, lower is better), and when
training stops (early stopping after `patience` epochs without improvement, or a wall-time
budget that the next epoch would overrun). The training loop asks `begin(epoch, elapsed)`
before an epoch and tells `finish(score, seconds)` after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BUDGET_RESERVE_S = 30  # seconds kept free at the end of a time budget (saving, test scoring)


def selection_score(report: dict) -> tuple:
    """Sort key of a validation report (lower is better): the photo-weighted P_E, then the
    pooled P_E, then the mean of the per-photo AUCs (higher is better) to break ties."""
    aucs = [f["auc"] for f in report.get("per_source", {}).values()
            if f["auc"] is not None and not math.isnan(f["auc"])]
    return (round(report["p_e_photo_mean"], 6), round(report["p_e"], 6),
            -float(np.mean(aucs)) if aucs else 0.0)


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch runs with: its index (from 0), payload, learning rate, whether it is at
    the target payload, whether batch normalization is frozen during it, and whether it is
    frozen right before it (the loop then re-estimates and freezes the layers)."""

    epoch: int
    payload: float
    lr: float
    final_stage: bool
    batchnorm_frozen: bool
    freeze_batchnorm: bool


class Schedule:
    """Curriculum, learning rate, frozen-BN phase, best epoch and stopping of one run.

    Args:
        stages: payloads of the curriculum, the last one the target (`parse_curriculum`).
        epochs: maximum number of epochs.
        stage_epochs: epochs of every stage but the last.
        lr: initial learning rate.
        lr_schedule: "cosine", "plateau" or "constant".
        patience: epochs at the target payload without a better score before stopping
            (or, with `frozen_bn_fraction`, before the frozen phase starts).
        frozen_bn_fraction: the last fraction of the planned epochs at the target payload
            that runs with batch normalization frozen; 0 for none.
        time_budget: wall-time budget in minutes, or None.
    """

    def __init__(self, stages, epochs: int, stage_epochs: int, lr: float,
                 lr_schedule: str = "cosine", patience: int = 8,
                 frozen_bn_fraction: float = 0.0, time_budget: float | None = None):
        self.stages = list(stages)
        self.epochs, self.stage_epochs = int(epochs), stage_epochs
        self.initial_lr, self.lr_schedule, self.patience = float(lr), lr_schedule, patience
        self.frozen_bn_fraction = frozen_bn_fraction
        self.time_budget = time_budget
        self.budget_s = None if time_budget is None else float(time_budget) * 60
        self.lr, self.planned_epochs = float(lr), int(epochs)
        self.stage_index, self.stage_start = 0, 0
        self.waited, self.plateau_wait = 0, 0
        self.epoch_times: list[float] = []
        self.frozen_from: int | None = None  # 1-based epoch from which batch norm is frozen
        self.freeze_now = False
        self.best_score, self.best_epoch = None, None
        self.stop_reason = "max epochs"
        self.stopped = False
        self._epoch, self._final_stage = None, False

    def begin(self, epoch: int, elapsed: float = 0.0) -> EpochPlan | None:
        """The plan of epoch `epoch` (from 0) after `elapsed` seconds of the run, or None when
        the time budget leaves no room for it (`stop_reason` says so)."""
        if not self._within_budget(epoch, elapsed):
            return None
        final_stage = self.stage_index == len(self.stages) - 1
        if not final_stage and epoch - self.stage_start >= self.stage_epochs:
            self.stage_index, self.stage_start = self.stage_index + 1, epoch
            final_stage = self.stage_index == len(self.stages) - 1
        self._epoch, self._final_stage = epoch, final_stage
        freeze = final_stage and self.frozen_from is None and self.frozen_bn_fraction > 0 and (
            self.freeze_now or epoch >= self.stage_start + (self.planned_epochs - self.stage_start)
            * (1 - self.frozen_bn_fraction))
        if freeze:
            self.frozen_from = epoch + 1
            self.waited = self.plateau_wait = 0
        if self.lr_schedule == "cosine":
            first = self.stage_start if final_stage else 0
            span = max(1, self.planned_epochs - first)
            progress = (epoch - first) / span if final_stage else 0.0
            self.lr = self.initial_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        return EpochPlan(epoch=epoch, payload=self.stages[self.stage_index], lr=self.lr,
                         final_stage=final_stage, batchnorm_frozen=self.frozen_from is not None,
                         freeze_batchnorm=freeze)

    def _within_budget(self, epoch: int, elapsed: float) -> bool:
        if self.budget_s is None or not self.epoch_times:
            return True
        recent = self.epoch_times[-3:]
        if elapsed + max(recent) + BUDGET_RESERVE_S > self.budget_s:
            self.stop_reason = f"time budget ({self.time_budget:g} min)"
            self.stopped = True
            return False
        self.planned_epochs = min(self.epochs, epoch + int(
            (self.budget_s - elapsed - BUDGET_RESERVE_S) / np.mean(recent)))
        return True

    def finish(self, score: tuple, seconds: float) -> bool:
        """Record the epoch begun last: its validation `score` (`selection_score`) and its
        duration. Returns whether it is the best so far (only epochs at the target payload
        count); sets `stopped` when training should end."""
        self.epoch_times.append(seconds)
        improved = False
        if self._final_stage:
            if self.best_score is None or score < self.best_score:
                self.best_score, self.best_epoch = score, self._epoch + 1
                improved = True
                self.waited = self.plateau_wait = 0
            else:
                self.waited += 1
                self.plateau_wait += 1
        if self.lr_schedule == "plateau" and self.plateau_wait >= max(2, self.patience // 3):
            self.lr, self.plateau_wait = self.lr * 0.5, 0
        if self._final_stage and self.waited >= self.patience:
            if self.frozen_bn_fraction > 0 and self.frozen_from is None:
                self.freeze_now = True
            else:
                self.stop_reason = (f"early stopping (no better validation P_E for "
                                    f"{self.patience} epochs)")
                self.stopped = True
        return improved
