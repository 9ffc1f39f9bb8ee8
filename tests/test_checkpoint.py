"""The epoch's running totals and the mid-epoch start, as a checkpoint carries them."""

from __future__ import annotations

import torch

from brainmri.train.checkpoint import EpochStart, EpochTotals


def test_epoch_totals_add_batches_and_round_trip_through_a_weights_only_checkpoint(tmp_path):
    totals = EpochTotals.zeros("cpu")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    totals.add(torch.tensor(0.5, requires_grad=True), logits, labels)
    totals.add(torch.tensor(0.25), logits[:1], labels[:1])
    assert (totals.loss_sum.item(), totals.correct.item(), totals.images.item()) == (1.75, 3.0, 4.0)
    assert not totals.loss_sum.requires_grad  # no graph is kept alive across steps

    torch.save({"accumulators": totals.as_tensor()}, tmp_path / "position.pt")
    back = EpochTotals.from_tensor(torch.load(tmp_path / "position.pt", weights_only=True)["accumulators"])
    assert torch.equal(back.as_tensor(), totals.as_tensor()) and back.as_tensor().dtype == torch.float64
    back.add(torch.tensor(1.0), logits[1:2], labels[1:2])  # the copy counts on alone
    assert back.images.item() == 5.0 and totals.images.item() == 4.0


def test_a_fresh_epoch_starts_at_its_first_batch():
    start = EpochStart(loader=[1, 2], totals=EpochTotals.zeros("cpu"))
    assert (start.batches_done, start.elapsed_s, start.rng) == (0, 0.0, None)
