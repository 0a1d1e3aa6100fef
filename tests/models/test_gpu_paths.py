"""The GPU-path options (channels_last, compile) parse, run a CPU step and change nothing but speed."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_transfer.data import ImageFolderDataModule
from lit_transfer.models import TransferClassifier


def _fit_one_step(model: TransferClassifier, root: Path, tmp_path: Path) -> pl.Trainer:
    data = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, augmentation="none")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    return trainer


def test_channels_last_weights_and_inputs_same_logits(image_tree: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="resnet18", channels_last=True)
    seen: list[torch.Tensor] = []
    model.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    _fit_one_step(model, image_tree, tmp_path)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    assert not seen[0].is_contiguous()  # really channels-last, not a 1x1 image that is both

    plain = TransferClassifier(num_classes=3, backbone="resnet18")
    plain.load_state_dict(model.state_dict())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    model.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{"backend": "aot_eager"}], ids=["aot-eager"])  # inductor: ~50 s of C++ builds
def test_compile_trains_and_keeps_checkpoint_names(options: bool | dict, image_tree: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TransferClassifier(num_classes=3, backbone="smallcnn", compile=options)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    trainer = _fit_one_step(model, image_tree, tmp_path)
    assert model.backbone._compiled_call_impl is not None and model.head._compiled_call_impl is not None
    assert any(not torch.equal(before[k], v) for k, v in model.head.state_dict().items())  # it trained
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)
    restored = TransferClassifier.load_from_checkpoint(path, compile=False)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    model.eval()
    restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), restored(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("option", "compiled"), [(False, False), (True, True), ({}, True), ({"mode": "default"}, True)]
)
def test_compile_option_values(option: bool | dict, compiled: bool) -> None:
    model = TransferClassifier(num_classes=3, backbone="smallcnn", compile=option)
    model.configure_model()  # what a Trainer calls; compilation itself happens at the first forward
    assert (model.backbone._compiled_call_impl is not None) is compiled
    assert (model.head._compiled_call_impl is not None) is compiled
