"""``python -m lit_transfer runs``: one row per run folder, with its status, from the run folders alone."""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_cli import tiny_args

from lit_transfer.callbacks.run_summary import HPARAMS_PREFIX, SUMMARY_NAME
from lit_transfer.cli import main
from lit_transfer.models import TransferClassifier


def listed(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str]]:
    capsys.readouterr()  # what came before
    main(["runs", "--csv", *args])
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return int(stop.value.code or 0)


def fail_in_epoch_1(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    step = TransferClassifier.training_step

    def failing(self: TransferClassifier, *args: Any, **kwargs: Any) -> Any:
        if self.current_epoch == 1:
            raise error
        return step(self, *args, **kwargs)

    monkeypatch.setattr(TransferClassifier, "training_step", failing)


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_runs_lists_each_run_with_its_status(
    image_tree: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["fit", *tiny_args(image_tree, "--experiment", "good", epochs=2)])
    with monkeypatch.context() as patch:
        fail_in_epoch_1(patch, ValueError("boom"))
        with pytest.raises(ValueError, match="boom"):
            main(["fit", *tiny_args(image_tree, "--experiment", "bad", epochs=2)])
    with monkeypatch.context() as patch:
        fail_in_epoch_1(patch, KeyboardInterrupt())
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            main(["fit", *tiny_args(image_tree, "--experiment", "stopped", epochs=2)])
    runs = in_tmp / "runs"
    # a run killed without a word (kill -9): its summary still says running, and its process is gone
    shutil.copytree(runs / "good" / "version_0", runs / "dead" / "version_0")
    dead = json.loads((runs / "dead" / "version_0" / SUMMARY_NAME).read_text())
    dead.update(status="running", pid=dead_pid(), host=socket.gethostname())
    (runs / "dead" / "version_0" / SUMMARY_NAME).write_text(json.dumps(dead))
    # a run from before run_summary.json: config.yaml and checkpoints only
    shutil.copytree(runs / "good" / "version_0", runs / "old" / "version_0")
    for path in [runs / "old" / "version_0" / SUMMARY_NAME, *(runs / "old" / "version_0").glob(HPARAMS_PREFIX + "*")]:
        path.unlink()

    rows = {r["experiment"]: r for r in listed(capsys, "--runs_dir", "runs")}
    assert {k: r["status"] for k, r in rows.items()} == {
        "bad": "failed",
        "dead": "died",
        "good": "finished",
        "old": "finished",
        "stopped": "interrupted",
    }
    good, old = rows["good"], rows["old"]
    assert (good["backbone"], good["weights"], good["freeze"], good["version"]) == ("smallcnn", "none", "none", "0")
    assert (good["epochs_done"], good["planned_epochs"]) == ("2", "2") and float(good["wall_time_s"]) > 0
    assert (rows["bad"]["epochs_done"], rows["stopped"]["epochs_done"]) == ("1", "1")
    assert 0.0 <= float(good["val_acc"]) <= 1.0 and good["best_epoch"] in ("0", "1")
    # the old run, read from its files: the same backbone, best val_acc (to the file name's 4 digits) and epochs
    assert (old["backbone"], old["epochs_done"], old["planned_epochs"]) == ("smallcnn", "2", "2")
    assert float(old["val_acc"]) == pytest.approx(float(good["val_acc"]), abs=1e-4)
    assert old["wall_time_s"] == ""

    capsys.readouterr()
    main(["runs", "--runs_dir", "runs"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["experiment", "version", "backbone", "weights", "freeze", "val_acc", "best_epoch",
                                "test_acc", "epochs", "wall_time", "status"]  # fmt: skip
    assert [line.split()[0] for line in table[1:]] == ["bad", "dead", "good", "old", "stopped"]
    assert "failed (ValueError: boom)" in next(line for line in table if line.startswith("bad"))
    assert "2/2" in next(line for line in table if line.startswith("good"))
    # sorted by status (text: ascending) and by epochs (a number: descending)
    by_status = [r["status"] for r in listed(capsys, "--runs_dir", "runs", "--sort", "status")]
    assert by_status == sorted(by_status)
    by_epochs = [r["epochs_done"] for r in listed(capsys, "--runs_dir", "runs", "--sort", "epochs")]
    assert by_epochs == ["2", "2", "2", "1", "1"]


def write_summary(run: Path, **fields: Any) -> None:
    run.mkdir(parents=True)
    summary = {"command": "fit", "status": "finished", "hparams": {"backbone": "resnet18"}, **fields}
    (run / SUMMARY_NAME).write_text(json.dumps(summary))


def test_sort_and_the_test_acc_of_a_later_test(
    tmp_path: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    write_summary(runs / "a" / "version_0", best_val_acc=0.5, wall_time_s=30.0, hparams={"backbone": "resnet50"})
    write_summary(runs / "a" / "version_1", best_val_acc=None, wall_time_s=10.0)
    write_summary(runs / "b" / "version_0", best_val_acc=0.9, wall_time_s=20.0, hparams={"backbone": "alexnet"})
    write_summary(runs / "b" / "version_1", best_val_acc=0.7, status="running", pid=dead_pid(), host="elsewhere")
    tested = runs / "a" / "version_0" / "checkpoints" / "best.ckpt"
    write_summary(runs / "a" / "version_2", command="test", tested_checkpoint=str(tested), test_acc=0.25)

    def order(*args: str) -> list[str]:
        return [f"{r['experiment']}/{r['version']}" for r in listed(capsys, "--runs_dir", str(runs), *args)]

    assert order() == ["a/0", "a/1", "b/0", "b/1"]  # the test run is not a row
    assert order("--sort", "val_acc") == ["b/0", "b/1", "a/0", "a/1"]  # descending, the missing value last
    assert order("--sort", "wall_time") == ["a/0", "b/0", "a/1", "b/1"]
    assert order("--sort", "backbone") == ["b/0", "a/1", "b/1", "a/0"]  # ascending: alexnet, resnet18, resnet50
    rows = {f"{r['experiment']}/{r['version']}": r for r in listed(capsys, "--runs_dir", str(runs))}
    assert rows["a/0"]["test_acc"] == "0.25" and rows["b/0"]["test_acc"] == ""
    assert rows["b/1"]["status"] == "running"  # another host's process: not known to be gone
    assert exit_code(["runs", "--runs_dir", str(runs), "--sort", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and "val_acc" in err and len(err.splitlines()) == 1


def test_missing_or_empty_runs_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    main(["runs", "--runs_dir", str(tmp_path / "nothing")])
    assert capsys.readouterr().out.strip() == f"no runs folder at {tmp_path / 'nothing'}"
    (tmp_path / "empty" / "feature_cache").mkdir(parents=True)
    main(["runs", "--runs_dir", str(tmp_path / "empty")])
    assert capsys.readouterr().out.strip() == f"no runs in {tmp_path / 'empty'}"
    (tmp_path / "file").write_text("x")
    assert exit_code(["runs", "--runs_dir", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_separate_test_reaches_the_row_of_the_run_it_tested(
    image_tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["fit", *tiny_args(image_tree, "--experiment", "t", epochs=1)])
    assert listed(capsys)[0]["test_acc"] == ""
    main(["test", *tiny_args(image_tree, "--experiment", "t"), "--ckpt_path", "last"])
    assert (in_tmp / "runs" / "t" / "version_0" / "test_0").is_dir()  # beside the run, not a version_1
    (row,) = listed(capsys)  # still one row: the test is not a run
    summary = json.loads((in_tmp / "runs" / "t" / "version_0" / "test_0" / SUMMARY_NAME).read_text())
    assert row["test_acc"] != "" and float(row["test_acc"]) == pytest.approx(summary["test_acc"], abs=1e-4)


def test_the_table_names_a_weights_file_by_its_name() -> None:
    from lit_transfer.commands.runs import format_table

    row = {"experiment": "e", "version": 0, "backbone": "timm/tf_efficientnet_lite0", "weights": "/a/b/lite0.pth"}
    table = format_table([row, {**row, "version": 1, "weights": "DEFAULT"}])
    lines = table.splitlines()
    assert " lite0.pth " in f"{lines[1]} " and "/a/b" not in table and " DEFAULT" in lines[2]
