"""The folder RotNet's ``predict`` writes upright copies into: its marker file and the checks that protect originals."""

from __future__ import annotations

from pathlib import Path

UPRIGHT_MARKER = ".lit_transfer_upright"  # in a write_upright folder: its images were written by lit_transfer


def check_upright_folder(write_upright: str, predict_dir: str | None) -> None:
    """Refuse a ``write_upright`` folder that could overwrite or feed back the user's own images.

    It must not be ``predict_dir``, inside it (the copies would be read as input next time) or above it (a copy could
    land on an original), and an existing folder must be empty or one lit_transfer wrote before.
    """
    target = Path(write_upright).resolve()
    if predict_dir:
        source = Path(predict_dir).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise ValueError(
                f"data.write_upright {write_upright!r} overlaps data.predict_dir {predict_dir!r} (the same folder, "
                "inside it or above it): the upright copies could overwrite originals or be read back as input. "
                "Give a folder outside predict_dir"
            )
    if target.is_dir() and any(target.iterdir()) and not (target / UPRIGHT_MARKER).is_file():
        raise ValueError(
            f"data.write_upright {write_upright!r} already holds files that lit_transfer did not write; give an "
            "empty or new folder, so none of them is overwritten"
        )
