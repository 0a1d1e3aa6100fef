"""MixUp/CutMix of training batches: the mixed inputs and soft targets, the loss, hard-label metrics, exact resume."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_cli import run_dir, tiny_args
from test_config_errors import args_for, config_error

from lit_transfer.cli import main
from lit_transfer.core.batches import Batch, FeatureBatch
from lit_transfer.models import RotNetClassifier, TransferClassifier
from lit_transfer.models.mixing import BatchMixing

LABELS = torch.tensor([0, 1, 2, 0, 1, 2])  # neighbours differ: each row's own share of its target is lam


def images(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (6, 3, 12, 16), generator=generator, dtype=torch.uint8)
    return torch.rand(6, 3, 12, 16, generator=generator)


def own_share(targets: torch.Tensor, labels: torch.Tensor = LABELS) -> torch.Tensor:
    """Each row's weight on its own label: the share of the batch's own image in the mix."""
    return targets[torch.arange(len(labels)), labels]


def test_mixup_mixes_each_image_with_its_neighbour_by_the_weight_its_target_carries() -> None:
    x = images()
    torch.manual_seed(0)
    mixed, targets = BatchMixing(3, mixup_alpha=0.4)(x, LABELS)
    assert targets.shape == (6, 3) and torch.allclose(targets.sum(1), torch.ones(6))
    lam = float(own_share(targets)[0])
    assert 0.0 < lam < 1.0 and torch.allclose(own_share(targets), torch.full((6,), lam))
    expected_targets = lam * F.one_hot(LABELS, 3) + (1 - lam) * F.one_hot(LABELS.roll(1, 0), 3)
    torch.testing.assert_close(targets, expected_targets.float())
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))


def test_uint8_images_are_mixed_as_floats_in_the_unit_range() -> None:
    x = images(torch.uint8)
    torch.manual_seed(0)
    mixed, targets = BatchMixing(3, mixup_alpha=0.4)(x, LABELS)
    lam = float(own_share(targets)[0])
    assert mixed.dtype == torch.float32
    unit = x.float() / 255
    torch.testing.assert_close(mixed, lam * unit + (1 - lam) * unit.roll(1, 0))


def test_cutmix_pastes_one_box_of_the_neighbour_whose_area_sets_the_targets() -> None:
    x = images()
    torch.manual_seed(3)
    mixed, targets = BatchMixing(3, cutmix_alpha=1.0)(x, LABELS)
    pasted = (mixed != x).any(dim=(0, 1))  # (H, W): where any image took its neighbour's pixels
    rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
    assert len(rows) > 0
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    assert pasted[box].all()  # one rectangle
    torch.testing.assert_close(mixed[..., box[0], box[1]], x.roll(1, 0)[..., box[0], box[1]])
    outside = torch.ones(12, 16, dtype=torch.bool)
    outside[box] = False
    assert torch.equal(mixed[..., outside], x[..., outside])
    lam = 1 - pasted[box].numel() / (12 * 16)
    torch.testing.assert_close(own_share(targets), torch.full((6,), lam))
    assert torch.allclose(targets.sum(1), torch.ones(6))


def test_both_alphas_pick_one_per_batch_and_mix_prob_leaves_some_unmixed() -> None:
    x = images()
    mixing = BatchMixing(3, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.6)
    kinds = []
    for seed in range(40):
        torch.manual_seed(seed)
        mixed, targets = mixing(x, LABELS)
        if torch.equal(mixed, x):
            assert torch.equal(targets, F.one_hot(LABELS, 3).float())  # unmixed, yet probability targets
            kinds.append("none")
        else:  # CutMix copies pixels, MixUp blends them
            kinds.append("cutmix" if ((mixed == x) | (mixed == x.roll(1, 0))).all() else "mixup")
        torch.manual_seed(seed)  # the same draws give the same mix
        again, again_targets = mixing(x, LABELS)
        assert torch.equal(again, mixed) and torch.equal(again_targets, targets)
    assert {"none", "mixup", "cutmix"} == set(kinds)


def test_cached_features_take_mixup_and_refuse_cutmix() -> None:
    features = torch.rand(6, 10)
    batch = FeatureBatch(features, LABELS, torch.arange(6), [])
    torch.manual_seed(0)
    mixed, targets = BatchMixing(3, mixup_alpha=0.4).mix_batch(batch)
    assert isinstance(mixed, FeatureBatch) and torch.equal(mixed.indices, batch.indices)
    lam = float(own_share(targets)[0])
    torch.testing.assert_close(mixed.features, lam * features + (1 - lam) * features.roll(1, 0))
    with pytest.raises(ValueError, match=r"model.init_args.cutmix_alpha.*cache_features.enabled: false"):
        BatchMixing(3, mixup_alpha=0.4, cutmix_alpha=1.0).mix_batch(batch)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"mixup_alpha": -0.2}, "model.init_args.mixup_alpha=-0.2"),
        ({"cutmix_alpha": math.nan}, "model.init_args.cutmix_alpha=nan"),
        ({"mix_prob": 1.5}, "model.init_args.mix_prob=1.5"),
        ({"mix_prob": -0.1}, "model.init_args.mix_prob=-0.1"),
    ],
)
def test_invalid_values_are_refused_naming_the_key(args: dict[str, float], key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        TransferClassifier(num_classes=3, backbone="smallcnn", **args)


def test_a_negative_alpha_on_the_command_line_stops_before_training(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = config_error(["fit", *args_for(image_tree, "--model.cutmix_alpha", "-1")], capsys)
    assert "model.init_args.cutmix_alpha=-1" in message
    assert not list(in_tmp.glob("runs/*/version_*/checkpoints/*.ckpt"))


def test_the_loss_is_soft_target_cross_entropy_and_the_metrics_get_the_labels() -> None:
    weights = [1.0, 2.0, 0.5]
    model = TransferClassifier(
        num_classes=3, backbone="smallcnn", mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1,
        class_weights=weights,
    ).eval()  # fmt: skip  # eval: BatchNorm gives the same outputs on both passes
    x = images(torch.uint8)
    batch = Batch(x, LABELS, torch.arange(6), [])
    for seed in range(4):  # MixUp or CutMix, whichever the seed draws
        torch.manual_seed(seed)
        loss, logits = model._shared_step(batch, "train")
        assert loss is not None and logits is not None
        torch.manual_seed(seed)
        mixed, targets = BatchMixing(3, mixup_alpha=0.4, cutmix_alpha=1.0)(x, LABELS)
        torch.testing.assert_close(logits, model(mixed))
        smoothed = targets * 0.9 + 0.1 / 3
        expected = -(torch.tensor(weights) * smoothed * logits.log_softmax(1)).sum(1).mean()
        torch.testing.assert_close(loss, expected)
        buffered_logits, buffered_targets, _ = model._metric_buffer.inputs["train"][-1]
        assert torch.equal(buffered_targets, LABELS) and torch.equal(buffered_logits, logits)
    # evaluation stages never mix: hard-label cross-entropy on the images as they are
    loss, logits = model._shared_step(batch, "val")
    assert logits is not None
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(loss, F.cross_entropy(logits, LABELS, label_smoothing=0.1))


def test_rotnet_trains_on_mixed_rotations() -> None:
    model = RotNetClassifier(num_classes=4, class_names=["0°", "90°", "180°", "270°"], backbone="smallcnn",
                             mixup_alpha=0.4)  # fmt: skip
    batch = Batch(images(torch.uint8), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6), [])
    torch.manual_seed(0)
    loss, _ = model._shared_step(batch, "train")
    assert loss is not None and torch.isfinite(loss) and loss.requires_grad


MIXING = ("--model.mixup_alpha", "0.4", "--model.cutmix_alpha", "1.0", "--model.mix_prob", "0.8")


def last_weights(base: Path, version: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(run_dir(base, version) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_defaults_change_nothing_and_a_resumed_mixing_run_equals_the_uninterrupted_one(
    image_tree: Path, in_tmp: Path
) -> None:
    main(["fit", *tiny_args(image_tree, epochs=2)])
    plain = last_weights(in_tmp, 0)
    main(["fit", *tiny_args(image_tree, "--model.mixup_alpha", "0.0", "--model.cutmix_alpha", "0.0", epochs=2)])
    assert_bitwise_equal(last_weights(in_tmp, 1), plain)
    off = ("--model.mixup_alpha", "0.4", "--model.cutmix_alpha", "1.0", "--model.mix_prob", "0")
    main(["fit", *tiny_args(image_tree, *off, epochs=2)])
    assert_bitwise_equal(last_weights(in_tmp, 2), plain)  # never mixed: the same hard-label training
    main(["fit", *tiny_args(image_tree, *MIXING, epochs=2)])
    mixed = last_weights(in_tmp, 3)
    assert not all(torch.equal(mixed[name], plain[name]) for name in plain)  # mixing changed the training
    main(["fit", *tiny_args(image_tree, *MIXING, epochs=1)])
    resume = str(run_dir(in_tmp, 4) / "checkpoints" / "last.ckpt")
    main(["fit", *tiny_args(image_tree, *MIXING, epochs=2), "--ckpt_path", resume])  # continues in version_4
    assert_bitwise_equal(last_weights(in_tmp, 4), mixed)


def test_mixing_with_a_frozen_backbone_trains_on_images_and_caches_only_evaluation_splits(
    image_tree: Path, in_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frozen = ("--model.freeze", "backbone", "--data.augmentation", "none", "--model.cutmix_alpha", "1.0")
    caplog.set_level(logging.INFO)
    main(["fit", *tiny_args(image_tree, *frozen, epochs=2)])
    lines = [r.getMessage() for r in caplog.records if "mix the training images" in r.getMessage()]
    assert len(lines) == 1 and "train split: loading images" in lines[0]
    cache = in_tmp / "runs" / "feature_cache"
    assert sorted(p.name.split("-")[0] for p in cache.iterdir() if p.is_dir()) == ["val"]
    main(["fit", *tiny_args(image_tree, *frozen, "--cache_features.enabled", "false", epochs=2)])
    assert_bitwise_equal(last_weights(in_tmp, 0), last_weights(in_tmp, 1))
