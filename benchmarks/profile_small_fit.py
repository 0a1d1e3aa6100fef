"""Where the time of a small fit goes: benchmark ``small_fit``'s variant *ours* once plain and once under cProfile.

Run ``python benchmarks/profile_small_fit.py [--threads 1] [--top 25] [--extra ARG ...]`` (about a minute on 2 cores).
Prints:

1. the per-epoch time split of an unprofiled fit: training batches (epoch start to the end of its last batch),
   validation (its loop) and everything else up to the next epoch (end-of-epoch hooks, checkpoints, reports,
   logging), from :class:`bench_small.EpochClock`;
2. the same split under the profiler, and the main thread's top entries by cumulative time, restricted to
   lit_transfer's code and Lightning's callbacks, loggers and checkpointing;
3. every background thread started during the fit (report drawing, checkpoint writing, TensorBoard's event writer,
   rich's refresh thread): its CPU seconds and, for the busy ones, its top entries by cumulative CPU time (each
   thread is profiled with ``time.thread_time`` from its ``run``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: F401  (sets up sys.path, logging and warnings as the driver does)
import torch
from bench_small import EpochClock, digits_root, ours_fit

MAIN_FILTER = re.compile(r"lit_transfer/|lightning/pytorch/(callbacks|loggers)/|checkpoint")
THREADS: list[tuple[str, cProfile.Profile, float, float]] = []  # name, profile, CPU s, wall s


def _profiled_run(self: threading.Thread) -> None:
    """``Thread.run`` under a per-thread CPU-time profiler; the result goes to ``THREADS`` when the thread ends."""
    prof = cProfile.Profile(time.thread_time)
    t0, c0 = time.perf_counter(), time.thread_time()
    prof.enable()
    try:
        _ORIGINAL_RUN(self)
    finally:
        prof.disable()
        THREADS.append((self.name, prof, time.thread_time() - c0, time.perf_counter() - t0))


_ORIGINAL_RUN = threading.Thread.run


def short(path: str) -> str:
    """``path`` from its package folder on (``lit_transfer/...``, ``lightning/...``, ``torch/...``)."""
    for marker in ("lit_transfer/", "lightning/", "site-packages/", "benchmarks/"):
        if marker in path:
            return (marker if marker != "site-packages/" else "") + path.split(marker, 1)[1]
    return path


def top_entries(stats: pstats.Stats, top: int, keep: re.Pattern[str] | None = None) -> list[str]:
    """The ``top`` entries by cumulative time whose file matches ``keep`` (all when ``None``), as table lines."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    entries = [
        (ct, tt, nc, f"{short(file)}:{line}({name})")
        for (file, line, name), (_cc, nc, tt, ct, _callers) in table.items()
        if keep is None or keep.search(file)
    ]
    entries.sort(reverse=True)
    lines = [f"{'cum s':>8} {'own s':>8} {'calls':>8}  function"]
    lines += [f"{ct:8.3f} {tt:8.3f} {nc:8d}  {where}" for ct, tt, nc, where in entries[:top]]
    return lines


def print_split(title: str, clock: EpochClock) -> None:
    """The per-epoch split of ``clock`` and the timed rate."""
    print(f"\n{title}: training images/s over epochs 2-4 = {clock.rate():.1f}")
    print(f"{'epoch':>5} {'train s':>8} {'val s':>8} {'other s':>8} {'img/s':>7}")
    for row in clock.split():
        e = int(row["epoch"])
        rate = clock.images[e] / row["train"]
        print(f"{e + 1:>5} {row['train']:8.3f} {row['val']:8.3f} {row['other']:8.3f} {rate:7.1f}")


def main() -> None:
    """Run the fit unprofiled, then profiled, and print the splits and the profiles."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, as the driver's --threads")
    parser.add_argument("--top", type=int, default=25, help="entries of the main thread's profile")
    parser.add_argument("--extra", nargs="*", default=[], help="more CLI arguments, e.g. --trainer.logger false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = digits_root()
    t0 = time.perf_counter()
    print_split("unprofiled", ours_fit(root, args.extra))
    print(f"(fit {time.perf_counter() - t0:.1f}s)")

    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        clock = ours_fit(root, args.extra)
    finally:
        prof.disable()
        threading.Thread.run = _ORIGINAL_RUN  # type: ignore[method-assign]
    print_split("profiled", clock)
    print(f"(fit {time.perf_counter() - t0:.1f}s)")

    print(f"\nmain thread, top {args.top} by cumulative time (lit_transfer/, Lightning callbacks/loggers/checkpoint):")
    print("\n".join(top_entries(pstats.Stats(prof), args.top, MAIN_FILTER)))

    print("\nbackground threads started during the fit (CPU seconds by time.thread_time):")
    by_name: dict[str, list[tuple[cProfile.Profile, float, float]]] = {}
    for name, thread_prof, cpu, wall in THREADS:
        by_name.setdefault(re.sub(r"[-_ ]?\d+$", "", name), []).append((thread_prof, cpu, wall))
    for name, runs in sorted(by_name.items(), key=lambda kv: -sum(r[1] for r in kv[1])):
        cpu, wall = sum(r[1] for r in runs), sum(r[2] for r in runs)
        print(f"  {name}: {len(runs)} thread(s), {cpu:.3f} CPU s over {wall:.1f} s alive")
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if alive:
        print(f"  still running at the end (not profiled): {', '.join(alive)}")
    for name, runs in by_name.items():
        if sum(r[1] for r in runs) < 0.05:
            continue
        merged = pstats.Stats(runs[0][0])
        for thread_prof, _cpu, _wall in runs[1:]:
            merged.add(thread_prof)
        print(f"\n{name}: top 12 by cumulative CPU time")
        print("\n".join(top_entries(merged, 12)))


if __name__ == "__main__":
    main()
