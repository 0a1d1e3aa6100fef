"""The command line end to end: run folders, checkpoints, resume, predict, config errors."""

from __future__ import annotations

import csv
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_transfer.cli import main


def tiny_args(root: Path, *extra: str, epochs: int = 1, backbone: str = "smallcnn") -> list[str]:
    # no loader workers and no progress bar, only for speed: tests/userpath runs the CLI with both on
    return [
        "--data", "ImageFolderDataModule",
        "--data.root", str(root),
        "--data.image_size", "32",
        "--data.batch_size", "8",
        "--data.num_workers", "0",
        "--data.test_fraction", "0.25",
        "--data.val_fraction", "0.25",
        "--model", "TransferClassifier",
        "--model.backbone", backbone,
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--experiment", "tiny",
        *extra,
    ]  # fmt: skip


def run_dir(base: Path, version: int = 0) -> Path:
    return base / "runs" / "tiny" / f"version_{version}"


def test_fit_writes_a_complete_run_folder(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, epochs=2)])
    run = run_dir(in_tmp)
    assert (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    ckpts = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(name.startswith("epoch") for name in ckpts)
    # the manifest lists every image once, with its class and split
    with open(run / "split_manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(Path(r["path"]).parts[0] == r["class"] for r in rows)
    # checkpoints hold plain types only and know their classes
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["class_names"] == ["blue", "green", "red"]
    assert ckpt["hyper_parameters"]["num_classes"] == 3
    assert ckpt["lit_transfer"]["class_names"] == ["blue", "green", "red"]
    assert ckpt["lit_transfer"]["image_size"] == 32 and len(ckpt["lit_transfer"]["manifest_hash"]) == 16
    assert ckpt["epoch"] == 1
    # the saved config resolves the seed and reproduces the run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["seed_everything"] == 42 and saved["model"]["init_args"]["backbone"] == "smallcnn"
    # TensorBoard has the epoch metrics with underscore names and the LR of every group
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_f1"} <= tags
    assert any(t.startswith("lr-") and t.endswith("head") for t in tags)
    assert "parameters" in {t.split("/")[0] for t in events.Tags()["tensors"]}


def test_resume_from_last_checkpoint_continues(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, epochs=1)])
    first = torch.load(run_dir(in_tmp) / "checkpoints" / "last.ckpt", weights_only=True)
    main(["fit", *tiny_args(image_tree, epochs=3), "--ckpt_path", "last"])
    # the resumed run continues in the same run folder
    assert not run_dir(in_tmp, 1).exists()
    resumed = torch.load(run_dir(in_tmp) / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2
    assert resumed["global_step"] == 3 * first["global_step"]
    assert resumed["optimizer_states"][0]["state"]  # optimizer state carried over, not restarted


def test_resume_after_unfreeze_keeps_parameter_groups(image_tree: Path, in_tmp: Path) -> None:
    extra = ["--model.backbone", "resnet18", "--model.freeze", "backbone", "--model.unfreeze_at_epoch", "1",
             "--model.backbone_lr_factor", "0.1", "--optimizer", "SGD", "--optimizer.lr", "0.05"]  # fmt: skip
    main(["fit", *tiny_args(image_tree, *extra, epochs=2)])
    last = run_dir(in_tmp) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    main(["fit", *tiny_args(image_tree, *extra, epochs=3), "--ckpt_path", str(last)])
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 2
    # the backbone kept training after the resume: its weights moved between the two checkpoints
    key = "backbone.layer4.1.conv2.weight"
    assert not torch.equal(ckpt["state_dict"][key], resumed["state_dict"][key])


def test_predict_writes_named_predictions(image_tree: Path, in_tmp: Path, tmp_path: Path) -> None:
    main(["fit", *tiny_args(image_tree, epochs=2)])
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(["red/img_000.png", "green/img_001.png", "blue/img_002.png"]):
        (photos / f"p{i}.png").write_bytes((image_tree / name).read_bytes())
    (photos / "notes.txt").write_text("not an image")
    ckpt = run_dir(in_tmp) / "checkpoints" / "last.ckpt"
    main(["predict", *tiny_args(image_tree), "--ckpt_path", str(ckpt), "--data.predict_dir", str(photos)])
    assert not run_dir(in_tmp, 1).exists()  # predictions go with the run they come from, not into a new version
    with open(run_dir(in_tmp) / "predict_0" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["p0.png", "p1.png", "p2.png"]
    for row in rows:
        assert row["prediction"] in {"red", "green", "blue"} and row["prediction"] == row["top1"]
        probs = [float(row[f"top{k}_prob"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert float(row["confidence"]) == probs[0]


def test_test_after_fit_and_merged_configs(image_tree: Path, in_tmp: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"trainer": {"max_epochs": 5}, "model": {"init_args": {"dropout": 0.1}}}))
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}}))
    args = tiny_args(image_tree)
    args.remove("--experiment")
    args.remove("tiny")
    main(["fit", "--config", str(base), "--config", str(override), *args, "--test_after_fit", "true"])
    run = in_tmp / "runs" / "base" / "version_0"  # named after the experiment's config: override.yaml is a preset
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 1 and saved["model"]["init_args"]["dropout"] == 0.1
    events = EventAccumulator(str(run))
    events.Reload()
    assert "test_acc" in events.Tags()["scalars"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lit_transfer", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_config_mistakes_fail_before_training(image_tree: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # the real command line: a typo in a key exits non-zero and names the key
    typo = run_cli("fit", *tiny_args(image_tree, "--model.backbon", "resnet18"), cwd=tmp_path)
    assert typo.returncode != 0 and "backbon" in typo.stderr
    monkeypatch.chdir(tmp_path)
    cases = [
        (tiny_args(image_tree, backbone="resnet5"), "resnet50"),
        (tiny_args(tmp_path / "nowhere"), "nowhere"),
        (tiny_args(image_tree, "--model.weights", "IMAGENET9K", backbone="resnet18"), "IMAGENET1K_V1"),
    ]
    for args, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_print_config_shows_defaults(image_tree: Path, tmp_path: Path) -> None:
    shown = run_cli("fit", *tiny_args(image_tree), "--print_config", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    config = yaml.safe_load(shown.stdout)
    assert config["checkpoint"]["monitor"] == "val_acc" and config["checkpoint"]["save_last"] is True
    assert config["seed_everything"] == 42
    assert config["reports"]["every_n_epochs"] == 1 and config["cache_features"]["enabled"] == "auto"


def test_reports_are_configured_from_the_command_line(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, epochs=2), "--reports.every_n_epochs", "2", "--experiment", "thin"])
    events = EventAccumulator(str(in_tmp / "runs/thin/version_0"), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("reports/confusion_matrix")) == 1  # the second validation only (the default: both)


def test_best_ckpt_names_the_best_epoch_for_later_commands(image_tree: Path, in_tmp: Path) -> None:
    by_loss = ("--checkpoint.monitor", "val_loss", "--checkpoint.mode", "min")
    main(["fit", *tiny_args(image_tree, *by_loss, epochs=3)])
    ckpts = run_dir(in_tmp) / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    state = next(v for k, v in last["callbacks"].items() if k.startswith("RunCheckpoint"))
    best = Path(state["best_model_path"])
    assert best.name.startswith("epoch") and best.is_file()
    assert (ckpts / "best.ckpt").read_bytes() == best.read_bytes()  # the same file under a stable name
    main(["validate", *tiny_args(image_tree), "--ckpt_path", "best"])  # in a new process: by the file's name
    events = EventAccumulator(str(run_dir(in_tmp) / "validate_0"))  # beside the run it evaluates
    events.Reload()
    assert events.Scalars("val_loss")[-1].value == pytest.approx(float(state["best_model_score"]), abs=1e-6)
    main(["fit", *tiny_args(image_tree, *by_loss, epochs=4), "--ckpt_path", "last"])  # last.ckpt, never best.ckpt
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 3


def test_a_moved_run_folder_resumes_into_its_own_last_ckpt(image_tree: Path, in_tmp: Path) -> None:
    main(["fit", *tiny_args(image_tree, epochs=1)])
    (in_tmp / "runs").rename(in_tmp / "moved")  # the whole runs folder moved, e.g. to another disk
    main(["fit", *tiny_args(image_tree, "--runs_dir", "moved", epochs=2), "--ckpt_path", "last"])
    ckpts = in_tmp / "moved/tiny/version_0/checkpoints"
    assert not list(ckpts.glob("last-v*.ckpt"))
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 1
    state = next(v for k, v in torch.load(ckpts / "last.ckpt", weights_only=True)["callbacks"].items()
                 if k.startswith("RunCheckpoint"))  # fmt: skip
    assert Path(state["last_model_path"]).parent == Path("moved/tiny/version_0/checkpoints")


def test_experiments_are_named_by_their_config_and_evaluations_stay_with_their_run(
    image_tree: Path, in_tmp: Path, tmp_path: Path
) -> None:
    experiment = in_tmp / "digits_probe.yaml"
    args = tiny_args(image_tree)
    experiment.write_text(
        yaml.safe_dump({"model": {"class_path": "TransferClassifier", "init_args": {"backbone": "smallcnn"}}})
    )
    preset = in_tmp / "trainer" / "quiet.yaml"
    preset.parent.mkdir()
    preset.write_text(yaml.safe_dump({"trainer": {"enable_model_summary": False}}))
    cut = args.index("--experiment")
    no_name = args[:cut] + args[cut + 2 :]  # the experiment named by no flag
    main(["fit", "--config", str(experiment), "--config", str(preset), *no_name])
    runs = in_tmp / "runs"
    assert [p.name for p in runs.iterdir()] == ["digits_probe"]  # the experiment's name, not the preset's
    run = runs / "digits_probe" / "version_0"
    assert yaml.safe_load((run / "config.yaml").read_text())["experiment"] == "digits_probe"

    main(["fit", "--config", str(run / "config.yaml")])  # a saved config.yaml runs the same experiment again
    assert sorted(p.name for p in (runs / "digits_probe").iterdir()) == ["version_0", "version_1"]

    ckpt = run / "checkpoints" / "last.ckpt"
    for command in ("validate", "test", "test"):
        main([command, "--config", str(experiment), *no_name, "--ckpt_path", str(ckpt)])
    evaluations = sorted(p.name for p in run.glob("*_[0-9]*") if p.is_dir())
    assert evaluations == ["test_0", "test_1", "validate_0"]
    assert list((run / "test_1").glob("events.out.tfevents.*"))  # its metrics, beside the run it tested
    assert sorted(p.name for p in (runs / "digits_probe").iterdir()) == ["version_0", "version_1"]

    elsewhere = tmp_path / "downloaded.ckpt"
    elsewhere.write_bytes(ckpt.read_bytes())
    main(["test", "--config", str(experiment), *no_name, "--ckpt_path", str(elsewhere)])
    assert list((runs / "digits_probe" / "evaluations" / "test_0").glob("events.out.tfevents.*"))


def test_last_ckpt_is_a_copy_of_the_steps_top_k_file_whose_contents_a_second_save_would_repeat(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lit_transfer.callbacks.checkpoint import RunCheckpoint, same_state

    args = ["fit", *tiny_args(image_tree, "--checkpoint.save_top_k", "-1", "--data.augmentation", "none", epochs=2)]
    main(args)
    ckpts = run_dir(in_tmp) / "checkpoints"
    (second,) = ckpts.glob("epoch001*.ckpt")
    # one snapshot and serialization for both, two files (damage to one leaves the other)
    assert (ckpts / "last.ckpt").read_bytes() == second.read_bytes()
    assert not os.path.samefile(ckpts / "last.ckpt", second)
    (first,) = ckpts.glob("epoch000*.ckpt")
    assert (ckpts / "last.ckpt").read_bytes() != first.read_bytes()
    # the same run saving last.ckpt separately writes exactly the contents the link shares
    monkeypatch.setattr(RunCheckpoint, "_twin", lambda self, trainer, filepath: None)
    main(args)
    ckpts = run_dir(in_tmp, 1) / "checkpoints"
    (second,) = ckpts.glob("epoch001*.ckpt")
    assert (ckpts / "last.ckpt").read_bytes() != second.read_bytes()  # serialized twice
    load = functools.partial(torch.load, map_location="cpu", weights_only=True)
    separate, linked = load(ckpts / "last.ckpt"), load(second)
    for state in (separate, linked):  # the run's wall-clock total moves on by the milliseconds between two saves
        assert state["callbacks"]["RunSummary"].pop("wall_time_s") > 0
    assert same_state(separate, linked)
