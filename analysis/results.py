"""docs/results.md from finished study folders: the answers as a researcher would cite them.

``python -m analysis.results STUDY_DIR [STUDY_DIR ...] --out docs/results.md`` writes, per study:
the command that reproduces it (size, seeds, --until-decided as recorded in study.json), its
seeds, evaluation items and protocol hash, the learning curves' end state, the looks of an
--until-decided study, the seed-level and item-level factor tables of the report (same functions
as report.md), the planner's seeds-needed lines (analysis.plan) and one validation picture per
factor level. Pictures and factor plots are copied next to the output (``<out stem>/<study>/``),
so the page stands without the study folders, and no path on it is absolute: data files are
named relative to the study's storage folder. Nothing here is typed by hand: rerun the command
after a study changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import paired
from analysis.compare import FactorComparison, analysis_set, compare_all, level_labels
from analysis.levels import level_pair_factors
from analysis.load import NotAStudyError, read_study_info, read_trials
from analysis.markdown import evaluation_section, factors_section, table
from analysis.plan import plan_study
from analysis.report import add_item_flags, factor_plot_name
from analysis.sequential import report_section as sequential_report_section
from analysis.tables import build_curves, build_trials

END_STATE_METRICS = ("val/mask_iou", "val/psnr_fg", "val/psnr_bal", "val/psnr")


def study_command(record: dict) -> str:
    """The command that reproduces the study (size, seeds and stopping rule as recorded)."""
    parts = ["python -m study.run", str(record.get("study"))]
    size = record.get("size") or ("smoke" if record.get("smoke") else "full")
    if size != "full":
        parts += ["--size", size]
    plan = record.get("plan") or {}
    if plan.get("seeds"):
        parts += ["--seeds", ",".join(str(s) for s in plan["seeds"])]  # run.parse_seeds
    if plan.get("until_decided"):
        parts.append("--until-decided")
        if plan.get("max_seeds"):
            parts += ["--max-seeds", str(plan["max_seeds"])]
    parts += [f"--margin {m}" for m in plan.get("margin_args") or []]
    parts += [f"--set {a}" for a in plan.get("set_args") or []]
    return " ".join(parts)


def shown_path(path: str, study_dir: Path) -> str:
    """A data path as the page names it: relative to the study's storage folder when inside
    it, else its folder and file name (the page never names another machine's paths)."""
    candidate = Path(path)
    storage = study_dir.resolve().parent
    try:
        return candidate.resolve().relative_to(storage).as_posix()
    except ValueError:
        return Path(*candidate.parts[-2:]).as_posix() if candidate.parts else path


def relative_protocol(
    evaluation: paired.StudyEvaluation, study_dir: Path
) -> paired.StudyEvaluation:
    """The evaluation with its protocol's dataset path made relative (shown_path)."""
    protocol = evaluation.protocol
    if not protocol or not protocol.get("dataset_path"):
        return evaluation
    path = shown_path(str(protocol["dataset_path"]), study_dir)
    return dataclasses.replace(evaluation, protocol={**protocol, "dataset_path": path})


def end_state(curves: pd.DataFrame, trials: pd.DataFrame) -> list[list[str]]:
    """Per metric: mean and range over finished trials of the value at each one's last step."""
    finished = set(trials.loc[trials["status"] == "finished", "trial_id"])
    last = curves[curves["trial_id"].isin(finished)].sort_values("step").groupby("trial_id").last()
    rows = []
    for metric in END_STATE_METRICS:
        if metric not in last.columns:
            continue
        values = last[metric].astype(float).dropna()
        if values.empty:
            continue
        rows.append(
            [
                metric,
                str(int(last["step"].max())),
                f"{values.mean():.3f}",
                f"{values.min():.3f} - {values.max():.3f}",
                str(len(values)),
            ]
        )
    return rows


def level_pictures(
    study_dir: Path, trials: pd.DataFrame, comparison: FactorComparison, dest: Path
) -> list[str]:
    """One validation picture per level (the last one of the level's lowest-seed finished
    trial), copied into dest; returns markdown image lines relative to dest's parent's parent."""
    lines = []
    analysed = trials[trials["status"] == "finished"]
    labels = level_labels(analysed, comparison.factor)
    for level in comparison.factor.levels:
        members = analysed[(labels == level.name).to_numpy(dtype=bool)].sort_values("seed")
        for trial_id in members["trial_id"]:
            pictures = sorted((study_dir / "runs" / str(trial_id) / "pictures").glob("val_*.png"))
            if pictures:
                name = (
                    f"{comparison.factor.name}_{level.name.replace(' ', '').replace('>', 'gt')}.png"
                )
                shutil.copyfile(pictures[-1], dest / name)
                lines.append(
                    f"![{comparison.factor.title} = {level.name} ({trial_id}, "
                    f"{pictures[-1].stem})]({dest.parent.name}/{dest.name}/{name})"
                )
                break
    return lines


def study_section(study_dir: Path, pictures_root: Path, margins: dict[str, float] | None) -> str:
    study = read_study_info(study_dir)
    record = json.loads((study_dir / "study.json").read_text())
    trial_files = read_trials(study.path)
    trials = build_trials(study, trial_files)
    curves = build_curves(study, trial_files)
    items, protocols = paired.gather_items(study.path, trials, study.name)
    trials = add_item_flags(trials, items)
    study_record = paired.read_study_record(study.path)
    _, study_margins = paired.study_question(study_record)
    seed_margins = {**study_margins, **(margins or {})}
    comparisons = compare_all(trials, study.objective, study.mode, seed_margins)
    evaluation = paired.evaluate_study(
        items,
        protocols,
        analysis_set(trials, study.objective),
        [
            *(c.factor for c in comparisons),
            *level_pair_factors(analysis_set(trials, study.objective)),
        ],
        margins,
        study_record,
    )
    dest = pictures_root / study.name
    dest.mkdir(parents=True, exist_ok=True)
    plot_names = {}
    for comparison in comparisons:
        name = factor_plot_name(comparison.factor.name)
        source = study_dir / "report" / name
        if source.is_file():
            shutil.copyfile(source, dest / name)
        plot_names[comparison.factor.name] = f"{pictures_root.name}/{study.name}/{name}"
    seeds = sorted(int(s) for s in trials["seed"].dropna().unique())
    protocol = evaluation.protocol or {}
    wall = trials["wall_s"].astype(float).sum()
    parts = [
        f"## {study.name} (size {record.get('size', 'smoke' if record.get('smoke') else 'full')})",
        f"Command: `{study_command(record)}`; seeds {seeds}; {len(trials)} trials "
        f"({(trials['status'] == 'finished').sum()} finished), {wall / 60:.0f} trial-minutes.",
        f"Evaluation: {items['item_id'].nunique() if len(items) else 0} items x "
        f"{items['camera'].nunique() if len(items) else 0} cameras, split "
        f"`{protocol.get('split', '?')}`, protocol hash `{protocol.get('item_set_hash', '?')}`, "
        f"checkpoint rule `{protocol.get('checkpoint_rule', record.get('checkpoint_rule', '?'))}`.",
        "Learning curves at the last step (finished trials):",
        table(["metric", "step", "mean", "range", "trials"], end_state(curves, trials)),
    ]
    looks = sequential_report_section(study_record)
    if looks:
        parts.append(looks.replace("## ", "### ", 1))
    parts += [
        evaluation_section(relative_protocol(evaluation, study_dir)),
        factors_section(comparisons, plot_names, evaluation),
        "Seeds these questions need (`python -m analysis.plan "
        f"{study.name}`: 80% power, alpha 0.05, at the study's margins):\n\n```\n"
        f"{plan_study(study_dir)}\n```",
    ]
    for comparison in comparisons:
        parts += level_pictures(study_dir, trials, comparison, dest)
    return "\n\n".join(parts)


def write_results(
    study_dirs: Sequence[Path], out: Path, margins: dict[str, float] | None = None
) -> Path:
    """Write `out` (and its picture folder beside it) from the given study folders."""
    pictures_root = out.parent / out.stem
    sections = [study_section(Path(d), pictures_root, margins) for d in study_dirs]
    text = "\n\n".join(
        [
            "# Results",
            "Generated by `python -m analysis.results "
            + " ".join(Path(d).name for d in study_dirs)
            + f" --out {out.name}` from the study folders; do not edit by hand.",
            *sections,
        ]
    )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(out)
    # Only after the page points at the new set: a picture it no longer shows (a factor that
    # is now reported under another name) is removed
    for picture in pictures_root.glob("*/*.png"):
        if f"{pictures_root.name}/{picture.parent.name}/{picture.name}" not in text:
            picture.unlink(missing_ok=True)
    for folder in pictures_root.iterdir():  # a study no longer on the page leaves no folder
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.results",
        description="Write docs/results.md (and its pictures) from finished study folders.",
    )
    parser.add_argument("study_dirs", nargs="+", type=Path, help="finished study folders")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args(argv)
    try:
        path = write_results(args.study_dirs, args.out)
    except (NotAStudyError, paired.ProtocolMismatch, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
