"""The user's path: every recipe switch at once, resumed from an epoch's checkpoint, finishes bit for bit the same.

With the user's defaults (2 persistent loader workers, progress bar, a BatchNorm backbone): the ``fine_tune`` recipe
(unfreeze at epoch 1, layer-wise lr decay, the warm-up/cosine schedule restarted), EMA, mixup and cutmix,
TrivialAugment and ``--calibrate temperature``. ``tests/test_ddp.py`` runs the same under DDP.
"""

from __future__ import annotations

from pathlib import Path

import torch
from userpath import lit, user_args, write_tree

SWITCHES = (
    "--recipe", "fine_tune",
    "--ema.enabled", "true", "--ema.decay", "0.9",
    "--model.mixup_alpha", "0.4", "--model.cutmix_alpha", "0.4",
    "--data.augmentation", "trivialaugment",
    "--calibrate", "temperature",
    "--checkpoint.save_top_k", "-1",
)  # fmt: skip


def checkpoint_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """The EMA weights, the live weights and the optimizer's state of a checkpoint, by key."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    found = {f"ema/{k}": v for k, v in state["state_dict"].items()}
    found |= {f"live/{k}": v for k, v in state["current_model_state"].items()}
    for i, per_param in state["optimizer_states"][0]["state"].items():
        found |= {f"optimizer/{i}/{k}": v for k, v in per_param.items() if isinstance(v, torch.Tensor)}
    return found


def test_every_switch_resumes_bitwise_with_loader_workers(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", per_class=8)
    lit("fit", *user_args(root, *SWITCHES, experiment="straight"), cwd=tmp_path)
    straight = tmp_path / "runs/straight/version_0/checkpoints"
    (first,) = straight.glob("epoch000*.ckpt")
    lit("fit", *user_args(root, *SWITCHES, experiment="resumed"), "--ckpt_path", str(first), cwd=tmp_path)
    a = checkpoint_tensors(straight / "last.ckpt")
    b = checkpoint_tensors(tmp_path / "runs/resumed/version_0/checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, first {differ[:3]}"
    assert not torch.equal(a["ema/backbone.layer1.0.conv1.weight"], a["live/backbone.layer1.0.conv1.weight"])
