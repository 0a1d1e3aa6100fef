"""The files a data module writes into the run folder: the split manifest and the list of unreadable images."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from lit_transfer.core.batches import BadSample
from lit_transfer.data.splits import Sample, write_manifest

MANIFEST_NAME = "split_manifest.csv"
BAD_IMAGES_NAME = "bad_images.csv"


def write_run_files(run_dir: Path, samples: list[Sample], class_names: Sequence[str], bad: list[BadSample]) -> None:
    """Write ``split_manifest.csv`` (when there are samples) and a fresh ``bad_images.csv`` (when files are bad)."""
    if samples:
        write_manifest(run_dir / MANIFEST_NAME, samples, class_names)
    write_bad(run_dir, bad, fresh=True)


def write_bad(run_dir: Path | None, bad: list[BadSample], fresh: bool = False) -> None:
    """Add ``bad`` to ``bad_images.csv`` in ``run_dir`` (a new file with its header when ``fresh`` or missing)."""
    if run_dir is None or not bad:
        return
    path = run_dir / BAD_IMAGES_NAME
    run_dir.mkdir(parents=True, exist_ok=True)
    new_file = fresh or not path.exists()
    with open(path, "w" if fresh else "a", newline="") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(["path", "split", "reason"])
        writer.writerows(bad)
