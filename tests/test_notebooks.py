"""The walkthrough notebooks: committed without outputs, and each runs end to end in its small size."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_rotnet_then_transfer.ipynb", "03_freezing_strategies.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_stripped(name: str) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs; strip them before committing"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


def _stdout(nb: object) -> str:
    return "".join(
        out.get("text", "")
        for cell in nb.cells  # type: ignore[attr-defined]
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream" and out.name == "stdout"
    )


@pytest.fixture
def run_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Execute a notebook in small mode with a kernel that runs this interpreter (the venv's python)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")

    prefix = tmp_path / "kernel"
    kernelspec.install(prefix=str(prefix), kernel_name="lit_transfer_test")
    kernel_json = prefix / "share" / "jupyter" / "kernels" / "lit_transfer_test" / "kernel.json"
    assert kernel_json.read_text().count(sys.executable.replace("\\", "\\\\")) >= 1
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("LIT_TRANSFER_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("LIT_TRANSFER_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def run(name: str) -> tuple[object, str]:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = nbclient.NotebookClient(
            nb, timeout=300, kernel_name="lit_transfer_test", resources={"metadata": {"path": str(NOTEBOOKS)}}
        )
        client.execute()
        errors = [
            f"{out.ename}: {out.evalue}"
            for cell in nb.cells
            if cell.cell_type == "code"
            for out in cell.outputs
            if out.output_type == "error"
        ]
        assert not errors, errors
        return nb, _stdout(nb)

    return run


def _images(nb: object) -> int:
    return sum(
        1
        for cell in nb.cells  # type: ignore[attr-defined]
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "display_data" and "image/png" in out.get("data", {})
    )


def test_quickstart_notebook(run_notebook) -> None:
    nb, text = run_notebook("01_quickstart.ipynb")
    match = re.search(r"FINAL val_acc: ([0-9.]+)", text)
    assert match, text[-2000:]
    assert float(match.group(1)) > 0.5
    assert "confusion matrix" in text
    assert _images(nb) >= 4  # sample grid, two curves, confusion matrix


def test_rotnet_notebook(run_notebook) -> None:
    nb, text = run_notebook("02_rotnet_then_transfer.ipynb")
    audit = re.search(r"AUDIT exit code: (\S+)", text)
    assert audit and audit.group(1) in {"0", "None"}, text[-2000:]  # the default geometry does not leak
    probe = re.search(r"PROBE rotnet=([0-9.]+) random=([0-9.]+)", text)
    assert probe, text[-2000:]
    assert all(0.0 <= float(v) <= 1.0 for v in probe.groups())
    assert "predicted rotation" in text
    assert _images(nb) >= 1


def test_freezing_notebook(run_notebook) -> None:
    _, text = run_notebook("03_freezing_strategies.ipynb")
    results = dict(re.findall(r"RESULT ([a-z -]+): ([0-9.]+)", text))
    assert set(results) == {"feature extraction", "fine-tuning", "gradual unfreezing"}, text[-2000:]
    assert float(results["fine-tuning"]) > 0.5
    assert "trainable" in text and "frozen" in text
