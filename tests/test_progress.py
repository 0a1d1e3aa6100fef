"""The throttled progress bar draws at most its rate, and always the last batch of a loader."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_transfer.callbacks.progress import ThrottledProgressBar


@pytest.mark.parametrize(("rate", "draws"), [(1e-6, 2), (0.0, 12)])
def test_throttled_bar_draws_first_and_last_batch_only_when_fast(
    rate: float, draws: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    bar = ThrottledProgressBar(max_redraws_per_second=rate)
    original = type(bar).__mro__[1].on_train_batch_end

    def spy(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        seen.append(batch_idx)
        original(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(type(bar).__mro__[1], "on_train_batch_end", spy)
    torch.manual_seed(0)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=12, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[bar], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(BoringModel())
    assert len(seen) == draws
    assert seen[-1] == 11  # the finished bar shows its total
    task = bar.progress.tasks[bar.train_progress_bar_id] if bar.progress else None
    assert task is None or task.completed == 12
