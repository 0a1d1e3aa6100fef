"""``clean-cache``: deleting the feature cache's own entries from a folder, and nothing else."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lit_transfer import features as fc

_ENTRY_FILES = frozenset({fc.META_NAME, fc.FEATURES_NAME, fc.VALID_NAME, fc.MARKER_NAME})
_PART_FILES = frozenset({fc.FEATURES_NAME, fc.INDICES_NAME})
_BUILDING = re.compile(r"^\.building-.+-[0-9a-f]{8}$")
_PART = re.compile(r"^part-[0-9]+$")


def _plain_files(folder: Path, allowed: frozenset[str], parts: bool = False) -> list[Path] | str:
    """The files of ``folder`` when it holds only ``allowed`` regular files (and ``part-N`` shards), else why not."""
    files: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.is_symlink():
            return f"{child.name} is a symbolic link"
        if parts and child.is_dir() and _PART.match(child.name):
            inner = _plain_files(child, _PART_FILES)
            if isinstance(inner, str):
                return f"{child.name}/: {inner}"
            files += [*inner, child]  # a shard's files, then the shard's folder
        elif child.is_file() and child.name in allowed:
            files.append(child)
        else:
            return f"{child.name} is not a file the cache writes"
    return files


def _entry_files(entry: Path) -> list[Path] | str:
    """What to delete for ``entry`` (its files, then the folder) when it provably is a cache entry, else why not."""
    if entry.is_symlink():
        return "a symbolic link"
    if not entry.is_dir():
        return "not a file the cache writes"
    if _BUILDING.match(entry.name):  # an extraction that was interrupted: no metadata yet, only the marker
        if not fc.is_cache_marker(entry / fc.MARKER_NAME):
            return f"named like an unfinished entry, but without a valid {fc.MARKER_NAME}"
        files = _plain_files(entry, _ENTRY_FILES, parts=True)
        return files if isinstance(files, str) else [*files, entry]
    try:
        meta = fc.read_meta(entry)
    except (OSError, ValueError):
        return f"no readable {fc.META_NAME}"
    key = meta.get("key") if isinstance(meta, dict) else None
    if not isinstance(key, str) or meta.get("complete") is not True or not isinstance(meta.get("parts"), dict):
        return f"{fc.META_NAME} is not a feature cache entry's"
    if not entry.name.endswith(f"-{key}") or fc.cache_key(meta["parts"]) != key:
        return f"{fc.META_NAME} does not match the entry's name and key"
    files = _plain_files(entry, _ENTRY_FILES)
    return files if isinstance(files, str) else [*files, entry]


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            path.rmdir()  # emptied just before: never recursive
        else:
            path.unlink()


@dataclass
class CacheCleaning:
    """What :func:`clean_cache` found in a folder, and deleted (or, dry, would delete).

    Attributes:
        folder: the folder cleaned.
        state: ``"missing"`` (no such folder), ``"not_a_folder"``, ``"empty"`` (a folder without entries),
            ``"not_a_cache"`` (none of its entries is the cache's: nothing deleted) or ``"cleaned"``.
        entries: the cache's own entries, deleted (or would be), in order; unfinished ones start with a dot.
        kept: what is not the cache's, as ``"name (why not)"``; kept in place.
        size: bytes in the deleted files.
        folder_removed: whether the folder itself went (or would go): only when nothing but the cache was in it.
    """

    folder: Path
    state: Literal["missing", "not_a_folder", "empty", "not_a_cache", "cleaned"]
    entries: list[Path] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    size: int = 0
    folder_removed: bool = False


def clean_cache(folder: Path, dry_run: bool = False) -> CacheCleaning:
    """Delete the entries of the feature cache in ``folder``, and nothing else; ``dry_run`` deletes nothing.

    Only what is provably the cache's own goes: entries whose ``meta.json`` matches their name and key and which
    hold only the cache's files, unfinished entries holding the cache's marker, then the folder if nothing else is
    left. A folder none of whose entries is the cache's is left as it is (``state="not_a_cache"``).
    """
    if not folder.exists() and not folder.is_symlink():
        return CacheCleaning(folder, "missing")
    if folder.is_symlink() or not folder.is_dir():
        return CacheCleaning(folder, "not_a_folder")
    own: list[tuple[Path, list[Path]]] = []
    kept: list[str] = []
    for child in sorted(folder.iterdir()):
        found = _entry_files(child)
        if isinstance(found, str):
            kept.append(f"{child.name} ({found})")
        else:
            own.append((child, found))
    if not own:
        return CacheCleaning(folder, "not_a_cache" if kept else "empty", kept=kept)
    size = sum(f.stat().st_size for _, files in own for f in files if f.is_file())
    if not dry_run:
        for _, files in own:
            _remove(files)
        if not kept:  # nothing but the cache's own entries was in it
            folder.rmdir()
    return CacheCleaning(folder, "cleaned", [e for e, _ in own], kept, size, folder_removed=not kept)
