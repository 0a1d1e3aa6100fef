"""``python -m lit_transfer clean-cache``: the front of :func:`lit_transfer.callbacks.feature_cache.clean_cache`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from lit_transfer.callbacks.feature_cache import DEFAULT_DIR_NAME
from lit_transfer.callbacks.feature_cache import clean_cache as clean_cache_folder
from lit_transfer.features import MARKER_NAME, META_NAME


def clean_cache(runs_dir: str = "runs", dir: str | None = None, dry_run: bool = False) -> None:
    """Delete the cached backbone features of a runs folder, and nothing else.

    Only what is provably the cache's own goes: entries whose ``meta.json`` matches their name and key and which
    hold only the cache's files, unfinished entries holding the cache's marker, then the folder if nothing else is
    left. A folder that is not a feature cache is refused (exit status 2) and left as it is; anything else in a
    cache folder is kept and listed (exit status 2).

    Args:
        runs_dir: runs folder whose feature_cache/ is cleaned.
        dir: cache folder (cache_features.dir), instead of runs_dir's.
        dry_run: list what would be deleted; delete nothing.
    """
    folder = Path(dir) if dir else Path(runs_dir) / DEFAULT_DIR_NAME
    result = clean_cache_folder(folder, dry_run=dry_run)
    if result.state == "missing":
        print(f"no feature cache at {folder}")
        return
    if result.state == "not_a_folder":
        _refuse(f"{folder} is not a folder")
    if result.state == "empty":
        print(f"no feature cache entries in {folder}")
        return
    if result.state == "not_a_cache":
        hint = f"; did you mean --runs_dir {folder}?" if dir and (folder / DEFAULT_DIR_NAME).is_dir() else ""
        _refuse(
            f"refusing to clean {folder}: it is not a feature cache (no entry with a valid {META_NAME} or "
            f"{MARKER_NAME}); nothing was deleted. It holds: {_listing(result.kept)}{hint}"
        )
    if dry_run:
        for entry in result.entries:
            print(f"would delete {entry}")
        if result.folder_removed:
            print(f"would delete {folder}")
    count = sum(not e.name.startswith(".") for e in result.entries)
    verb = "would delete" if dry_run else "deleted"
    print(f"{verb} {count} feature cache entries ({result.size / 2**20:.1f} MiB) in {folder}")
    if result.kept:
        _refuse(f"kept {folder}: it holds files that are not the feature cache's: {_listing(result.kept)}")


def _listing(items: list[str], most: int = 8) -> str:
    more = f", and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more if items else "nothing"


def _refuse(message: str) -> NoReturn:
    print(f"lit_transfer clean-cache: {message}", file=sys.stderr)
    sys.exit(2)
