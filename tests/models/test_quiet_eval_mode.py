"""Frozen parts run in eval mode on purpose: Lightning's warning about it is silenced for that check only."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_transfer.core.lightning_private import quiet_eval_mode_warning
from lit_transfer.models import TransferClassifier


def _loader() -> DataLoader:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    return DataLoader(TensorDataset(images, torch.arange(8) % 2), batch_size=4)


def test_a_frozen_fit_warns_nothing_about_eval_mode_and_filters_nothing_globally() -> None:
    filters_before = list(warnings.filters)
    model = TransferClassifier(num_classes=2, backbone="smallcnn", freeze="backbone", class_weights=[1.0, 2.0])
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train_dataloaders=_loader())  # plain dataloaders: no data module to read
    assert not [w for w in caught if "in eval mode" in str(w.message)]
    assert warnings.filters == filters_before
    assert model.class_weight.tolist() == [1.0, 2.0]


def test_the_check_still_warns_for_other_loops() -> None:
    class Loop:
        def _warn_if_modules_in_eval_mode(self) -> None:
            warnings.warn("Found 3 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)

    quiet, loud = Loop(), Loop()
    quiet_eval_mode_warning(quiet)
    quiet_eval_mode_warning(quiet)  # a second fit with the same trainer wraps once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet._warn_if_modules_in_eval_mode()
        assert not caught
        loud._warn_if_modules_in_eval_mode()
        assert len(caught) == 1
    assert not hasattr(quiet._warn_if_modules_in_eval_mode.__wrapped__, "__wrapped__")
