"""Which checkpoints and which trials each objective picks: val/psnr_fg, val/psnr_union, val/psnr_bal.

    python benchmarks/objective_choice.py STUDY_DIR [STUDY_DIR ...] [--rescore]

Issue 22, item 13: foreground PSNR alone rewards painting mouse colour over the whole image;
psnr_union (metrics v2's objective) and psnr_bal (v3's, the default: PSNR of the class-balanced
MSE; definitions in trainables/gslrm/metrics.py) charge the painted background. For every trial
run folder (STUDY/runs/<trial>) this prints, per objective, the step the `best` checkpoint rule
picks and that step's mask IoU and whole-image PSNR, then the trials ranked by each objective's
best value.

Where a run's journal lacks an objective (runs made before the metric existed), --rescore
scores each *kept* checkpoint on the run's validation list with the evaluator (rig order,
the run's own target views) and chooses among those; without --rescore such runs are listed
as lacking the metric. Rescoring renders every kept checkpoint: minutes per run on a CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainables.journal import TrialJournal  # noqa: E402

OBJECTIVES = ("val/psnr_fg", "val/psnr_union", "val/psnr_bal")
SHOWN = ("val/psnr_fg", "val/psnr_union", "val/psnr_bal", "val/mask_iou", "val/psnr")


def best_step(curve: Mapping[int, Mapping[str, float]], objective: str) -> int | None:
    """The step with the highest finite `objective` (ties: the earliest), None when none."""
    scored = {
        s: m[objective] for s, m in curve.items() if math.isfinite(m.get(objective, math.nan))
    }
    return min(scored, key=lambda s: (-scored[s], s)) if scored else None


def choices(trial: str, curve: Mapping[int, Mapping[str, float]]) -> list[dict]:
    """One row per objective: the chosen step and the shown metrics there."""
    rows = []
    for objective in OBJECTIVES:
        step = best_step(curve, objective)
        values = curve.get(step, {}) if step is not None else {}
        rows.append(
            {
                "trial": trial,
                "objective": objective,
                "step": step,
                **{m: values.get(m, math.nan) for m in SHOWN},
            }
        )
    return rows


def rescored_curve(run_dir: Path) -> dict[int, dict[str, float]]:
    """{kept checkpoint step: mean validation metrics} from the evaluator, on the run's
    validation list and its own target views (what its validation scored)."""
    from trainables.gslrm.config import load_config
    from trainables.gslrm.data.dataset import validation_list_file
    from trainables.gslrm.evaluate import checkpoint_steps, evaluate_run

    config = load_config(run_dir / "config.yaml")
    own_targets = config.training.dataset.target_has_input
    curve = {}
    for step, path in sorted(checkpoint_steps(run_dir / "checkpoints").items()):
        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate_run(
                run_dir,
                config,
                dataset_path=validation_list_file(config),
                checkpoint=path,
                out_dir=tmp,
            )
            rows = pd.read_parquet(result.items_path)
        rows = rows if own_targets else rows[rows["role"] == "novel"]
        curve[step] = {
            f"val/{m.split('/')[-1]}": float(rows[m.split("/")[-1]].mean()) for m in SHOWN
        }
    return curve


def study_rows(study_dir: Path, rescore: bool) -> tuple[list[dict], list[str]]:
    """Choice rows of every run of a study, and the runs skipped (with why)."""
    rows, skipped = [], []
    for run_dir in sorted((study_dir / "runs").glob("*")):
        curve = TrialJournal.read(run_dir).curve
        missing = [o for o in OBJECTIVES if not any(o in m for m in curve.values())]
        if missing and rescore and (run_dir / "config.yaml").is_file():
            curve, missing = rescored_curve(run_dir), []
        if missing:
            skipped.append(
                f"{run_dir.name}: no {', '.join(missing)} in its journal (use --rescore)"
            )
            continue
        rows += choices(f"{study_dir.name}/{run_dir.name}", curve)
    return rows, skipped


def ranking(rows: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Trials ranked by their best value of `objective` (the value at the step it picks)."""
    part = rows[rows["objective"] == objective].copy()
    part = part.sort_values(objective, ascending=False, na_position="last")
    part["rank"] = range(1, len(part) + 1)
    return part[["rank", "trial", "step", *SHOWN]]


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per objective: the steps its rule picks (median, range) and the means of the shown
    metrics at those steps, over the trials."""
    grouped = rows.groupby("objective", sort=False)
    table = grouped.agg(
        trials=("trial", "count"),
        median_step=("step", "median"),
        first_step=("step", "min"),
        last_step=("step", "max"),
        **{f"mean {m}": (m, "mean") for m in SHOWN},
    )
    return table.reset_index()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dirs", nargs="+", type=Path)
    parser.add_argument("--rescore", action="store_true", help="re-score kept checkpoints")
    args = parser.parse_args(argv)
    rows, skipped = [], []
    for study_dir in args.study_dirs:
        found, missed = study_rows(study_dir, args.rescore)
        rows += found
        skipped += missed
    for line in skipped:
        print(f"skipped {line}")
    if not rows:
        print("no run with every objective")
        return 1
    frame = pd.DataFrame(rows)
    print("## Step each objective's `best` rule picks\n")
    print(frame.to_string(index=False, float_format="{:.3f}".format))
    print("\n## Per objective: the picked steps and the mean metrics there\n")
    print(summary(frame).to_string(index=False, float_format="{:.3f}".format))
    for objective in OBJECTIVES:
        print(f"\n## Trials ranked by {objective}\n")
        print(ranking(frame, objective).to_string(index=False, float_format="{:.3f}".format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
