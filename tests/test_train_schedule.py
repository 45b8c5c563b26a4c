"""`edgetrunc.train.schedule` and `TrainConfig`: the epoch plan of a run, without TensorFlow."""

import math
import subprocess
import sys

import pytest

from edgetrunc._options import flag_names
from edgetrunc.errors import InputError
from edgetrunc.train.config import TrainConfig
from edgetrunc.train.schedule import Schedule


def run(schedule, scores, elapsed=None, seconds=1.0):
    """Drive `schedule` with one validation score per epoch; returns the plans it made."""
    plans = []
    for epoch, score in enumerate(scores):
        plan = schedule.begin(epoch, 0.0 if elapsed is None else elapsed[epoch])
        if plan is None:
            break
        plans.append(plan)
        schedule.finish((score,), seconds)
        if schedule.stopped:
            break
    return plans


def test_curriculum_stages_step_down_to_the_target():
    schedule = Schedule([1.0, 0.7, 0.4], epochs=7, stage_epochs=2, lr=1e-3, lr_schedule="constant")
    plans = run(schedule, [0.5] * 7)
    assert [p.payload for p in plans] == [1.0, 1.0, 0.7, 0.7, 0.4, 0.4, 0.4]
    assert [p.final_stage for p in plans] == [False] * 4 + [True] * 3
    assert all(p.lr == 1e-3 for p in plans) and schedule.stop_reason == "max epochs"


def test_only_the_target_payload_counts_for_the_best_epoch():
    schedule = Schedule([1.0, 0.4], epochs=4, stage_epochs=2, lr=1e-3)
    run(schedule, [0.1, 0.1, 0.3, 0.2])
    assert schedule.best_epoch == 4 and schedule.best_score == (0.2,)


def test_cosine_goes_to_one_percent_over_the_target_stage():
    schedule = Schedule([1.0, 0.4], epochs=6, stage_epochs=2, lr=1.0, lr_schedule="cosine")
    lrs = [p.lr for p in run(schedule, [0.5, 0.4, 0.3, 0.2, 0.1, 0.05])]
    assert lrs[:3] == [1.0, 1.0, 1.0]  # the first stage at full rate, then cosine from 1.0
    assert lrs[3] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs[5] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert lrs == sorted(lrs, reverse=True)


def test_plateau_halves_after_patience_over_three_epochs_without_improvement():
    schedule = Schedule([0.4], epochs=8, stage_epochs=2, lr=1.0, lr_schedule="plateau", patience=9)
    lrs = [p.lr for p in run(schedule, [0.3, 0.4, 0.4, 0.4, 0.2, 0.4, 0.4, 0.4])]
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]


def test_early_stopping_after_patience_epochs():
    schedule = Schedule([0.4], epochs=10, stage_epochs=2, lr=1e-3, patience=2)
    plans = run(schedule, [0.3, 0.2, 0.25, 0.3, 0.1])
    assert len(plans) == 4 and schedule.best_epoch == 2
    assert schedule.stop_reason == "early stopping (no better validation P_E for 2 epochs)"


def test_frozen_batchnorm_starts_at_its_fraction_of_the_target_stage():
    schedule = Schedule([1.0, 0.4], epochs=10, stage_epochs=2, lr=1e-3, frozen_bn_fraction=0.25)
    plans = run(schedule, [0.5 - 0.01 * i for i in range(10)])
    assert [p.freeze_batchnorm for p in plans].index(True) == 8  # 2 + 8 * 0.75
    assert [p.batchnorm_frozen for p in plans] == [False] * 8 + [True] * 2
    assert schedule.frozen_from == 9


def test_patience_starts_the_frozen_phase_then_ends_training():
    schedule = Schedule([0.4], epochs=20, stage_epochs=2, lr=1e-3, patience=2,
                        frozen_bn_fraction=0.1)
    plans = run(schedule, [0.3, 0.4, 0.4, 0.4, 0.4, 0.4])
    assert schedule.frozen_from == 4 and plans[3].freeze_batchnorm
    assert len(plans) == 5 and schedule.stop_reason.startswith("early stopping")


def test_time_budget_stops_before_an_epoch_that_would_overrun_it():
    schedule = Schedule([0.4], epochs=10, stage_epochs=2, lr=1e-3, time_budget=1.0)
    plans = run(schedule, [0.5] * 10, elapsed=[0, 10, 20, 30, 40, 50, 60, 70, 80, 90], seconds=10.0)
    assert len(plans) == 3 and schedule.stop_reason == "time budget (1 min)"
    assert schedule.planned_epochs == 3  # 2 + int((60 - 20 - 30) / 10)


@pytest.mark.parametrize("kwargs, param", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": -1.0}, "lr"),
    ({"lr": math.inf}, "lr"), ({"strategy": "tpu"}, "strategy"),
    ({"lr_schedule": "step"}, "lr_schedule"), ({"bn_reestimate": "always"}, "bn_reestimate"),
    ({"frozen_bn_fraction": 1.0}, "frozen_bn_fraction"), ({"time_budget": 0}, "time_budget"),
    ({"payload": 1.5}, "payload"), ({"curriculum": "0.2,0.4"}, "curriculum"),
    ({"model_kwargs": ["width"]}, "model_kwargs"),
])
def test_config_names_the_bad_parameter(kwargs, param):
    """The library names the parameter; the command line shows it as its flag."""
    with pytest.raises(InputError, match=f"^{param}") as refused:
        TrainConfig(**kwargs)
    assert refused.value.param in (param, None)
    flag = flag_names(TrainConfig)[param]  # the one name map: frozen_bn_fraction is --frozen-bn
    assert refused.value.naming(flag).startswith(flag if refused.value.param else param)


def test_config_parses_curriculum_and_model_arguments():
    config = TrainConfig(payload="0.4", curriculum="1.0,0.7", model_kwargs=["width=2"])
    assert config.payload == 0.4 and config.stages == [1.0, 0.7, 0.4]
    assert config.model_kwargs == {"width": 2}
    assert TrainConfig(model_kwargs={"front_end": "srm6"}).model_kwargs == {"front_end": "srm6"}


def test_schedule_and_config_import_without_tensorflow():
    code = ("import sys; import edgetrunc.train; from edgetrunc.train.schedule import Schedule; "
            "from edgetrunc.train.config import TrainConfig; "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
