"""The epoch-end policy (best epoch, early stopping, plateau schedule) on metric sequences, without a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from brainmri.train import policy
from brainmri.train.policy import TrainerState

NO_STOP = SimpleNamespace(enabled=False)


def stop(patience, monitor="val/loss", mode="min", min_delta=0.0):
    return SimpleNamespace(enabled=True, monitor=monitor, mode=mode, min_delta=min_delta, patience=patience)


def run(values, monitor="val/acc", mode="max", early_stop=NO_STOP, key=None):
    """Feed a metric sequence through after_epoch; returns (state, improved flags, epochs trained)."""
    st, flags = TrainerState(), []
    for epoch, v in enumerate(values, 1):
        row = {"epoch": epoch, monitor: v}
        if key and key != monitor:
            row[key] = v
        flags.append(policy.after_epoch(st, row, monitor, mode, early_stop))
        if st.phase_stopped:
            break
    return st, flags


def test_best_epoch_is_the_first_maximum_and_nan_never_improves():
    st, flags = run([0.5, 0.7, float("nan"), 0.7, 0.6, 0.9, 0.8])
    assert flags == [True, True, False, False, False, True, False]
    assert (st.best_epoch, st.best_metric, st.epoch, st.phase_epoch) == (6, 0.9, 7, 7)


def test_min_mode_best_epoch():
    st, _ = run([1.0, 0.8, 0.9, 0.3, 0.3], monitor="val/loss", mode="min")
    assert (st.best_epoch, st.best_metric) == (4, 0.3)


def test_early_stop_after_patience_epochs_without_improvement_beyond_min_delta():
    # val/loss improves by less than min_delta at epochs 3 and 4: they count as bad epochs
    st, _ = run([1.0, 0.5, 0.49, 0.48, 0.2], monitor="val/loss", mode="min",
                early_stop=stop(patience=2, min_delta=0.05))
    assert st.phase_stopped and st.epoch == 4 and st.es_bad_epochs == 2 and st.es_best == 0.5


def test_an_improvement_resets_the_patience_count():
    st, _ = run([1.0, 1.1, 0.9, 1.2, 1.3, 1.4], monitor="val/loss", mode="min", early_stop=stop(patience=3))
    assert st.phase_stopped and st.epoch == 6 and st.es_best == 0.9


def test_next_phase_starts_a_fresh_early_stopping_record_but_keeps_the_best():
    st, _ = run([1.0, 2.0, 3.0], monitor="val/loss", mode="min", early_stop=stop(patience=2))
    assert st.phase_stopped and policy.phase_done(st, epochs=10)
    policy.next_phase(st)
    assert (st.phase, st.phase_epoch, st.phase_stopped, st.es_best, st.es_bad_epochs) == (1, 0, False, None, 0)
    assert (st.best_epoch, st.epoch) == (1, 3) and not policy.phase_done(st, epochs=1)


def test_plateau_schedule_reads_its_monitor_and_others_step_per_epoch():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    for loss in [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]:
        policy.step_scheduler(plateau, {"val/loss": loss, "val/acc": 0.0}, "val/loss")
    # no improvement at epochs 2-3 halves once; 0.5 improves; two more flat epochs halve again
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    step = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.1)
    policy.step_scheduler(step, {}, "val/loss")
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)
    policy.step_scheduler(None, {}, "val/loss")  # a constant LR has no schedule


def test_state_round_trips_through_a_checkpoint_dict():
    st, _ = run([0.1, 0.4], early_stop=stop(patience=5, monitor="val/acc", mode="max"))
    from dataclasses import asdict

    again = TrainerState.from_dict({**asdict(st), "unknown_future_key": 1})
    assert again == st
