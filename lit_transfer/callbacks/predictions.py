"""Write predictions.csv (path, class name, confidence, top-k) into the run folder."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_transfer.core.run_folder import run_dir

PREDICTIONS_NAME = "predictions.csv"


class PredictionWriter(BasePredictionWriter):
    """Gathers predict outputs and writes one CSV row per input file, with class names instead of indices."""

    def __init__(self, filename: str = PREDICTIONS_NAME) -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    @staticmethod
    def _gather(trainer: pl.Trainer, predictions: Sequence[Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Every rank's predictions on rank 0 (the loaders shard without padding: each file appears once)."""
        local = None
        if predictions:
            local = (torch.cat([p["probs"] for p in predictions]).float().cpu(),
                     torch.cat([p["index"] for p in predictions]).cpu())  # fmt: skip
        parts = [local]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, local)
        found = [p for p in parts if p is not None]
        if not found:
            return None, None
        return torch.cat([p[0] for p in found]), torch.cat([p[1] for p in found])

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        """Write the CSV once all batches are predicted."""
        probs, index = self._gather(trainer, predictions)
        if not trainer.is_global_zero or probs is None or index is None:  # both None or neither
            return
        names = list(getattr(pl_module, "class_names", [str(i) for i in range(probs.shape[1])]))
        paths = trainer.datamodule.predict_paths  # type: ignore[attr-defined]
        root = trainer.datamodule.predict_dir  # type: ignore[attr-defined]
        k = min(getattr(pl_module.hparams, "top_k", 5), probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        out_dir = run_dir(trainer)
        if out_dir is None:
            rank_zero_warn(
                f"{self.filename} not written: this run has no run folder (fast_dev_run, or --trainer.logger false); "
                f"predict without them to get <runs_dir>/<experiment>/version_N/{self.filename}"
            )
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / self.filename
        tmp = target.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            header = ["path", "prediction", "confidence"]
            for j in range(1, k + 1):
                header += [f"top{j}", f"top{j}_prob"]
            writer.writerow(header)
            for row in sorted(range(len(index)), key=lambda r: int(index[r])):
                cells: list[Any] = [os.path.join(root, paths[int(index[row])]), names[int(top_i[row, 0])]]
                cells.append(f"{float(top_p[row, 0]):.6f}")
                for j in range(k):
                    cells += [names[int(top_i[row, j])], f"{float(top_p[row, j]):.6f}"]
                writer.writerow(cells)
        tmp.replace(target)
        rank_zero_info(f"wrote {len(index)} predictions to {target}")
