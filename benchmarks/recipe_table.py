"""The README's recipe table: top-1 and ECE of every recipe, with and without EMA / mixup / TrivialAugment.

Run ``python benchmarks/recipe_table.py [--data DIR] [--runs DIR] [--only digits|lfw ...]``. It writes the two data
sets (``python -m lit_transfer.demo`` digits and lfw), then runs one real ``python -m lit_transfer fit`` per row, on
the real ImageNet EfficientNet-Lite0 weights (``python -m lit_transfer.demo lite0-weights``), each with the same
config (``configs/<data>_lite0_recipes.yaml``: split, image size, epoch budget) and ``--test_after_fit true``, and
reads each run's logged ``test_acc`` and ``test_ece``. The table (Markdown, with the command of every row) goes to
stdout and ``benchmarks/recipe_table.md``, the numbers to ``benchmarks/recipe_table.json``. Never run by the tests:
on 2 CPU cores the 30 rows take about half an hour.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lit_transfer.demo import build_digits, build_lfw, lite0_weights, logged_scalars, newest_run  # noqa: E402

RECIPES = ("linear_probe", "fine_tune", "full")
VARIANTS: dict[str, list[str]] = {
    "-": [],
    "EMA": ["--ema.enabled", "true", "--ema.warmup", "true"],  # decay 0.999 unwarmed: ~100 steps barely move it
    "mixup": ["--model.init_args.mixup_alpha", "0.2"],
    "TrivialAugment": ["--data.init_args.augmentation", "trivialaugment"],
    "calibrated": ["--calibrate", "temperature"],  # a temperature fitted on the validation split; test_ece after it
}
DATA = {"digits": build_digits, "lfw": build_lfw}
OUT = Path(__file__).resolve().parent


def row_command(data: str, recipe: str, variant: str) -> list[str]:
    """The fit command of one row, as printed (``$WEIGHTS`` stands for the Lite0 file)."""
    experiment = f"recipes_{data}_{recipe}_{variant.lower().replace('-', 'base')}"
    return [
        "python", "-m", "lit_transfer", "fit",
        "--config", f"configs/{data}_lite0_recipes.yaml",
        "--recipe", recipe,
        "--model.init_args.weights", "$WEIGHTS",
        *VARIANTS[variant],
        "--experiment", experiment,
    ]  # fmt: skip


def run_row(command: list[str], weights: str, root: Path, runs: Path) -> dict[str, float]:
    """Run one row's fit on the data in ``root`` into ``runs``; its test accuracy and ECE and its wall time."""
    argv = [sys.executable if c == "python" else weights if c == "$WEIGHTS" else c for c in command]
    data = command[command.index("--config") + 1].split("/")[-1].split("_")[0]
    argv += ["--data.init_args.root", str(root / data), "--runs_dir", str(runs)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    experiment = command[command.index("--experiment") + 1]
    scalars = logged_scalars(newest_run(runs / experiment))
    return {"test_acc": scalars["test_acc"][-1], "test_ece": scalars["test_ece"][-1], "seconds": seconds}


def table(rows: list[dict[str, object]]) -> str:
    """The Markdown table of ``rows``."""
    lines = [
        "| data | recipe | with | top-1 | ECE | fit s | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | `{r['recipe']}` | {r['variant']} | {r['test_acc']:.3f} | {r['test_ece']:.3f} | "
            f"{r['seconds']:.0f} | `{r['command']}` |"
        )
    return "\n".join(lines)


def pivot(rows: list[dict[str, object]]) -> str:
    """The README's form: one line per data set and recipe, a ``top-1 / ECE`` cell per switch, and its command."""
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    head = " | ".join(f"{'no switch' if v == '-' else '+ ' + v} (`{' '.join(VARIANTS[v])}`)" if v != "-" else
                      "no switch" for v in variants)  # fmt: skip
    lines = [f"| data | recipe | {head} | command (add the switch) |", "|---|---|" + "---|" * (len(variants) + 1)]
    for data in DATA:
        for recipe in RECIPES:
            cells = {str(r["variant"]): r for r in rows if r["data"] == data and r["recipe"] == recipe}
            if not cells:
                continue
            shown = [
                f"{float(cells[v]['test_acc']):.3f} / {float(cells[v]['test_ece']):.3f}" if v in cells else ""
                for v in variants
            ]
            command = (
                f"`python -m lit_transfer fit --config configs/{data}_lite0_recipes.yaml --recipe {recipe} "
                '--model.init_args.weights "$WEIGHTS"`'
            )
            lines.append(f"| {data} | `{recipe}` | {' | '.join(shown)} | {command} |")
    return "\n".join(lines)


def main() -> None:
    """Build the data, run every row, write the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", default="data", help="folder for the digits/ and lfw/ image folders")
    parser.add_argument("--runs", default="runs", help="runs folder of the table's fits")
    parser.add_argument("--only", nargs="*", choices=sorted(DATA), default=sorted(DATA), help="data sets to run")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS), help="rows to run")
    parser.add_argument("--append", action="store_true", help="add the rows to recipe_table.json instead of replacing")
    args = parser.parse_args()
    root, runs = Path(args.data).resolve(), Path(args.runs).resolve()
    weights = lite0_weights()
    saved = OUT / "recipe_table.json"
    rows: list[dict[str, object]] = json.loads(saved.read_text(encoding="utf-8")) if args.append else []
    for data in args.only:
        DATA[data](root / data)
        for recipe in RECIPES:
            for variant in args.variants:
                command = row_command(data, recipe, variant)
                result = run_row(command, weights, root, runs)
                rows.append({"data": data, "recipe": recipe, "variant": variant, **result,
                             "command": shlex.join(command).replace("'$WEIGHTS'", '"$WEIGHTS"')})  # fmt: skip
                print(f"{data} {recipe} {variant}: {result}", file=sys.stderr, flush=True)
    order = {(d, r, v): i for i, (d, r, v) in enumerate((d, r, v) for d in DATA for r in RECIPES for v in VARIANTS)}
    rows.sort(key=lambda r: order[(str(r["data"]), str(r["recipe"]), str(r["variant"]))])
    saved.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    text = table(rows)
    (OUT / "recipe_table.md").write_text(pivot(rows) + "\n\n" + text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
