"""Checkpoint state of a data module: the split manifest, saved, read back, and matched to the files on disk."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from lit_transfer.data.splits import Sample


def manifest_state(samples: list[Sample], class_names: Sequence[str]) -> dict[str, Any]:
    """The split assignment, stored in checkpoints so resume and test use the same splits.

    Plain lists, never strings joined with separators, so any character of a file or class name survives, and
    the checkpoint still loads with ``torch.load(weights_only=True)``.
    """
    if not samples:
        return {}
    manifest = {
        "paths": [s.path for s in samples],
        "labels": [s.label for s in samples],
        "splits": [s.split for s in samples],
    }
    return {"class_names": list(class_names), "manifest": manifest}


def saved_samples(state: dict[str, Any], class_names: Sequence[str]) -> list[Sample]:
    """The samples of a checkpoint's manifest, as it stored them (``class_names`` reads the old string format)."""
    manifest = state["manifest"]
    if isinstance(manifest, dict):
        columns = zip(manifest["paths"], manifest["labels"], manifest["splits"], strict=True)
        return [Sample(path, int(label), split) for path, label, split in columns]
    # checkpoints written before the list format: "split\tclass\tpath" rows joined by newlines
    index = {name: i for i, name in enumerate(class_names)}
    saved = []
    for row in manifest.split("\n"):
        split, name, path = row.split("\t", 2)
        saved.append(Sample(path, index[name], split))
    return saved


def resumed_samples(
    state: dict[str, Any], samples: list[Sample], class_names: list[str], warn: bool = True
) -> list[Sample]:
    """The checkpoint's split assignment under the names the files have on disk now (``samples``).

    Raises ``ValueError`` when the classes or the files differ from the checkpoint's: the CLI calls this before
    training, so a refused resume rewrites none of the run's files.
    """
    if list(state["class_names"]) != class_names:
        raise ValueError(f"the checkpoint's classes {state['class_names']} differ from the data's {class_names}")
    saved = saved_samples(state, class_names)

    # two files whose names differ only in Unicode form are compared as they are
    nfc = len({(unicodedata.normalize("NFC", s.path), s.label) for s in samples}) == len(samples)

    def key(path: str) -> str:
        return unicodedata.normalize("NFC", path) if nfc else path

    on_disk = {(key(s.path), s.label): s.path for s in samples}
    before = {(key(s.path), s.label) for s in saved}
    if on_disk.keys() != before:
        added = sorted(p for p, _ in on_disk.keys() - before)
        removed = sorted(p for p, _ in before - on_disk.keys())
        raise ValueError(
            f"the data changed since the checkpoint was written: {len(added)} file(s) added {added[:5]}, "
            f"{len(removed)} removed or relabelled {removed[:5]}. Restore the files or start a new run"
        )
    if warn and {(key(s.path), s.split) for s in samples} != {(key(s.path), s.split) for s in saved}:
        rank_zero_warn("the split settings changed since the checkpoint; keeping the checkpoint's splits")
    return [Sample(on_disk[(key(s.path), s.label)], s.label, s.split) for s in saved]
