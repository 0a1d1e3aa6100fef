"""The leaf layer: the angle codec, seeds, class weights, batch types and the data-module contract."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_transfer.core.angles import angle_name, class_angles, name_angle, named_angles
from lit_transfer.core.contract import DataInfo, PredictViewInfo, data_info, provides_data_info
from lit_transfer.data import ImageFolderDataModule, RotNetDataModule


def test_angle_names_round_trip() -> None:
    for steps in (4, 7, 8, 16):
        names = [angle_name(k * 360 / steps) for k in range(steps)]
        assert [name_angle(n) for n in names] == [float(f"{k * 360 / steps:g}") for k in range(steps)]
    assert angle_name(22.5) == "22.5°" and angle_name(90.0) == "90°"
    assert name_angle(" 45 ° ") == 45.0
    assert name_angle("45") is None and name_angle("cat") is None and name_angle("1e3°") is None


def test_class_angles_fall_back_to_even_steps() -> None:
    assert class_angles(["0°", "90°", "180°", "270°"]) == [0.0, 90.0, 180.0, 270.0]
    assert class_angles(["cat", "dog"]) == [0.0, 180.0]
    assert class_angles(["0°", "dog"]) == [0.0, 180.0]  # all names or none
    assert named_angles(["0°", "dog"]) is None and named_angles([]) is None
    assert named_angles([str(d) for d in range(10)]) is None  # digit classes (MNIST) are not angles


def test_the_rotnet_data_module_writes_what_the_codec_reads(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    data = RotNetDataModule(root=str(tmp_path / "photos"), image_size=32, num_workers=0)
    assert data.class_names == [angle_name(45 * k) for k in range(8)]
    assert data.angles == class_angles(data.class_names) == [45.0 * k for k in range(8)]
    assert isinstance(data, PredictViewInfo) and provides_data_info(data)


def test_moved_names_stay_importable_from_their_old_homes() -> None:
    from lit_transfer.core import batches, class_weights, seeding
    from lit_transfer.data import base, sampler
    from lit_transfer.features import FeatureBatch, keep_batch

    assert FeatureBatch is batches.FeatureBatch and keep_batch is batches.keep_batch
    assert base.Batch is batches.Batch and base.BadSample is batches.BadSample and base.mix_seed is seeding.mix_seed
    assert sampler.inverse_frequency_weights is class_weights.inverse_frequency_weights
    assert seeding.mix_seed(1, 2, 3) == seeding.mix_seed(1, 2, 3) != seeding.mix_seed(1, 2, 4)
    assert class_weights.inverse_frequency_weights([0, 0, 1], 2).tolist() == pytest.approx([0.75, 1.5])


def test_lit_transfer_data_modules_satisfy_the_contract(tree_factory) -> None:
    data = ImageFolderDataModule(root=str(tree_factory("data")), image_size=32, num_workers=0)
    assert data_info(data) is data and isinstance(data, DataInfo)
    assert not isinstance(data, PredictViewInfo)
    data.setup("fit")
    assert data.manifest_hash is not None and len(data.train_targets()) > 0
    assert data.paths_of("train", [0])[0].endswith(".png")
    assert isinstance(data.image_of("val", 0), torch.Tensor)


def test_no_or_foreign_data_module_gives_nothing() -> None:
    assert data_info(None) is None
    partial = SimpleNamespace(image_size=32, normalization=None, sampler="random")  # no manifest, no methods
    assert data_info(partial) is None


def test_the_contract_check_evaluates_no_member() -> None:
    class Costly:
        image_size = 32
        normalization = None
        sampler = "random"

        @property
        def manifest_hash(self) -> str:
            raise AssertionError("evaluated")

        def train_targets(self) -> list[int]:
            return []

        def paths_of(self, split: str, indices: list[int]) -> list[str]:
            return []

        def image_of(self, split: str, index: int) -> None:
            return None

    costly = Costly()
    assert data_info(costly) is costly
