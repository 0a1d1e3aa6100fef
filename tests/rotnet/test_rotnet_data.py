"""RotNetDataModule: labels are the rotations, splits are by image, validation is deterministic, binned labels are
their angles' bins, every view has the same shape, and batches are uint8."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lit_transfer.data.rotation import center_crop
from lit_transfer.data.rotnet import RotationGroupSampler, RotNetDataModule, matches, rotation_class_names
from lit_transfer.models.rotnet import circular_angle_error


def module(root: Path | list[str], **kwargs: object) -> RotNetDataModule:
    kwargs = {"image_size": 32, "batch_size": 8, "num_workers": 0, "val_fraction": 0.3, **kwargs}
    dm = RotNetDataModule(root=root if isinstance(root, list) else str(root), **kwargs)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def test_class_names_flow_like_image_folder_classes(unlabeled: Path) -> None:
    assert rotation_class_names(8) == ["0°", "45°", "90°", "135°", "180°", "225°", "270°", "315°"]
    assert rotation_class_names(4) == ["0°", "90°", "180°", "270°"]
    assert rotation_class_names(8, "binned") == rotation_class_names(8)  # bins are centred on 0°, 45°, …
    dm = RotNetDataModule(root=str(unlabeled), num_rotations=4)
    assert dm.num_classes == 4 and dm.angles == [0.0, 90.0, 180.0, 270.0]  # known before setup
    with pytest.raises(ValueError, match="num_rotations"):
        RotNetDataModule(root=str(unlabeled), num_rotations=6)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RotNetDataModule(root=str(unlabeled / "nowhere"))


@pytest.mark.parametrize("geometry", ["safe", "naive"])
def test_labels_are_the_rotations_of_the_source(asymmetric_tree: Path, geometry: str) -> None:
    dm = module(asymmetric_tree, geometry=geometry, val_fraction=0.0)
    train = dm._datasets["train"]
    source = train.images[0][0].float()  # the square source, before rotation
    grouped = dm.make_dataset(dm.data_root, train.paths, [0], "val")  # every rotation of the one image
    views = [grouped[k] for k in range(8)]
    assert [label for _, label, _ in views] == list(range(8))

    def reference(angle: float) -> torch.Tensor:  # an independent rotation: bilinear, of the smooth source
        turned = TF.rotate(source, angle, interpolation=InterpolationMode.BILINEAR)
        return center_crop(turned, 32)

    for k, (view, _, _) in enumerate(views):
        assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
        error = (view.float() - reference(45 * k))[:, 4:-4, 4:-4].abs().mean()  # naive's corners are black anyway
        assert error < 3, f"label {k}: {error:.1f} grey levels from its rotation"
        if k not in (0, 4):  # the other direction is far off: the angle is counter-clockwise
            assert (view.float() - reference(-45 * k))[:, 4:-4, 4:-4].abs().mean() > 5 * error + 5


def test_binned_labels_are_their_angles_bins(asymmetric_tree: Path) -> None:
    from lit_transfer.data.rotnet import angle_bin

    # bin k covers [45° k - 22.5°, 45° k + 22.5°): class 0 is upright, and each class's name is its bin's centre
    assert [angle_bin(a, 8) for a in (10, 350, 30, 22.4, 22.5, 337.5, 337.4, 180, 200, -10, 370)] == [
        0, 0, 1, 0, 1, 0, 7, 4, 4, 0, 0,
    ]  # fmt: skip
    assert [angle_bin(a, 4) for a in (44, 46, 134, 136, 316)] == [0, 1, 1, 2, 0]
    dm = module(asymmetric_tree, angle_mode="binned", val_fraction=0.0)
    assert dm.class_names[:3] == ["0°", "45°", "90°"] and dm.angles == [45.0 * k for k in range(8)]
    train = dm._datasets["train"]
    centres = torch.tensor(dm.angles, dtype=torch.float64)
    draws = [train.draw(0, epoch) for epoch in range(200)]
    labels, angles = torch.tensor([d[0] for d in draws]), torch.tensor([d[1] for d in draws], dtype=torch.float64)
    assert bool(((angles >= 0) & (angles < 360)).all()) and set(labels.tolist()) == set(range(8))
    assert labels.tolist() == [angle_bin(float(a), 8) for a in angles]
    assert float(circular_angle_error(angles, centres[labels]).max()) <= 22.5  # within half a bin of the name
    grouped = dm.make_dataset(dm.data_root, train.paths, [0], "val")
    angles = torch.tensor(grouped.grouped_angles(0), dtype=torch.float64)
    assert bool((circular_angle_error(angles, centres) < 22.5).all()) and bool(((angles >= 0) & (angles < 360)).all())
    assert angles.tolist() == grouped.grouped_angles(0)  # validation angles never change
    assert len({round(float(a) % 45, 6) for a in angles}) == 8  # not the bin centres: anywhere inside the bins
    angles = angles.tolist()
    source = train.images[0][0].float()
    for k in (1, 3, 6):
        view = grouped[k][0].float()
        expected = center_crop(TF.rotate(source, angles[k], interpolation=InterpolationMode.BILINEAR), 32)
        assert (view - expected)[:, 4:-4, 4:-4].abs().mean() < 3


def test_split_is_by_image_and_validation_is_deterministic(unlabeled_factory: Callable[..., Path]) -> None:
    root = unlabeled_factory("u", count=20)
    dm = module(root, test_fraction=0.2)
    splits = {s.split: set() for s in dm.samples}
    for s in dm.samples:
        splits[s.split].add(s.path)
    assert sum(map(len, splits.values())) == 20 and len(set().union(*splits.values())) == 20  # one split each
    assert {p for p in splits["train"] if p.startswith("sub/")}  # class folders are just folders
    val = dm._datasets["val"]
    assert len(val) == 8 * len(splits["val"])

    def epoch_of(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batches = list(loader)
        return tuple(torch.cat([b[i] for b in batches]) for i in range(3))  # type: ignore[return-value]

    images, labels, indices = epoch_of(dm.val_dataloader())
    again = epoch_of(module(root, test_fraction=0.2).val_dataloader())
    assert images.dtype == torch.uint8 and torch.equal(images, again[0]) and torch.equal(labels, again[1])
    # every validation image in every rotation, once
    pairs = sorted(zip(indices.tolist(), labels.tolist(), strict=True))
    assert pairs == [(i, k) for i in range(len(splits["val"])) for k in range(8)]
    # the same seed gives the same split; another seed another one
    assert module(root, test_fraction=0.2).samples == dm.samples
    assert module(root, test_fraction=0.2, seed=7).samples != dm.samples


def test_training_draws_a_fresh_rotation_per_epoch(unlabeled: Path) -> None:
    dm = module(unlabeled, val_fraction=0.0)
    train = dm._datasets["train"]
    per_epoch = [[train[(i, epoch)][1] for i in range(len(train))] for epoch in range(6)]
    assert len({tuple(labels) for labels in per_epoch}) > 1
    assert per_epoch[3] == [train[(i, 3)][1] for i in range(len(train))]  # seeded by (seed, epoch, image)
    assert set().union(*map(set, per_epoch)) <= set(range(8))


def test_all_rotations_keeps_an_images_rotations_in_one_batch(unlabeled: Path) -> None:
    dm = module(unlabeled, all_rotations=True, val_fraction=0.0, batch_size=8)
    loader = dm.train_dataloader()
    orders = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 10
        for batch in batches:
            assert batch.targets.tolist() == list(range(8)) and len(set(batch.indices.tolist())) == 1
        orders.append([int(b.indices[0]) for b in batches])
    assert sorted(orders[0]) == list(range(10)) and orders[0] != orders[1]  # images reshuffled each epoch
    shards = [RotationGroupSampler(10, 8, seed=0, num_replicas=3, rank=r) for r in range(3)]
    images = [{position // 8 for position, _ in shard} for shard in shards]
    assert all(len(shard) == 4 * 8 for shard in shards) and set().union(*images) == set(range(10))  # whole images


def test_dataset_normalization_over_the_views(unlabeled: Path) -> None:
    dm = module(unlabeled, normalize="dataset")
    mean, std = dm.normalization
    assert len(mean) == len(std) == 3 and all(0.3 < m < 0.7 for m in mean)  # grey noise, on the [0, 1] scale


def test_patterns_roots_and_non_square_photos(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for folder, name, size in [("a", "x.png", (40, 90)), ("a/deep", "y.PNG", (90, 40)), ("b", "z.jpg", (50, 50)),
                               ("a/.hidden", "h.png", (50, 50))]:  # fmt: skip
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / folder / name)
    dm = module([str(tmp_path / "a"), str(tmp_path / "b")], patterns=["*.png"], val_fraction=0.0)
    assert sorted(s.path for s in dm.samples) == ["a/deep/y.PNG", "a/x.png"]
    assert dm.data_root == tmp_path.resolve()
    dm = module([str(tmp_path / "a"), str(tmp_path / "b")], val_fraction=0.0, square="resize", geometry="naive")
    assert len(dm.samples) == 3
    views = [dm._datasets["train"][i][0] for i in range(3)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert matches("a/b/IMG.PNG", ["*.png"]) and matches("a/b/c.jpg", ["a/*/c.jpg"]) and not matches("c.jpg", ["*.png"])
    with pytest.raises(ValueError, match="no image files"):
        module(str(tmp_path / "b"), patterns=["*.tif"])


def test_predict_gives_upright_views_indexed_by_file(unlabeled: Path) -> None:
    dm = RotNetDataModule(root=str(unlabeled), image_size=32, num_workers=0, predict_dir=str(unlabeled / "sub"))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch.targets.tolist() == list(range(5)) and batch.images.shape == (5, 3, 32, 32)
    assert [Path(p).name for p in dm.predict_paths] == [f"img_{i:03d}.png" for i in (1, 3, 5, 7, 9)]
    with pytest.raises(ValueError, match="could overwrite originals"):
        RotNetDataModule(root=str(unlabeled), predict_dir=str(unlabeled), write_upright=str(unlabeled))


def test_unreadable_images_are_skipped_and_reported(unlabeled: Path) -> None:
    (unlabeled / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (unlabeled / "truncated.png").write_bytes((unlabeled / "img_000.png").read_bytes()[:200])
    with pytest.warns(UserWarning, match="unreadable"):
        dm = module(unlabeled, val_fraction=0.0, max_bad_fraction=0.5)
    assert "broken.png" not in {s.path for s in dm.samples}
    labels = []
    with pytest.warns(UserWarning, match="decode"):
        for batch in dm.train_dataloader():
            labels += dm.on_before_batch_transfer(batch, 0).targets.tolist()
    assert len(labels) == 10  # the truncated file decodes in no worker and is dropped from its batch
    assert len(dm.bad_found) == 2
