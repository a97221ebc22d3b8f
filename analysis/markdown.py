"""Render report.md from the trials table, factor comparisons and importance: text only, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis import paired
from analysis.compare import FactorComparison, analysis_set, varying_columns
from analysis.importance import Importance
from analysis.interactions import Interaction
from analysis.levels import LevelSummary
from analysis.load import StudyInfo
from analysis.metrics import metric_info
from analysis.stats import Estimate
from analysis.tables import best_column, config_columns, final_column
from analysis.tuning import ComputeSummary
from analysis.verdicts import Verdict, plan

TOP_TRIALS = 5
STATUS_ORDER = ("finished", "stopped_early", "diverged", "errored")
EMPTY_CELL = "—"


def cell(value: Any, decimals: int = 4) -> str:
    """One table cell: missing -> a dash, floats rounded, pipes and newlines made harmless."""
    if value is None or (not isinstance(value, str | list | dict) and pd.isna(value)):
        return EMPTY_CELL
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if (
            value != 0 and abs(value) < 10**-decimals
        ):  # e.g. learning rates: keep 3 significant digits
            return f"{value:.3g}"
        return f"{value:.{decimals}f}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pictures_cell(row: pd.Series) -> str:
    """Links from report/report.md to the trial's last validation picture and its evaluation
    picture (columns validation_picture / eval_picture, relative to the study folder)."""
    links = [
        f"[{label}](../{row[column]})"
        for label, column in (("validation", "validation_picture"), ("evaluation", "eval_picture"))
        if isinstance(row.get(column), str) and row[column]
    ]
    return ", ".join(links) or EMPTY_CELL


def _number(metric: str, value: float) -> str:
    return cell(float(value), metric_info(metric).decimals)


def _interval(metric: str, estimate: Estimate) -> str:
    if not estimate.has_ci:
        return EMPTY_CELL
    return f"[{_number(metric, estimate.ci_low)}, {_number(metric, estimate.ci_high)}]"


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    ordered = {s: int(counts.pop(s)) for s in STATUS_ORDER if s in counts}
    ordered.update({str(s): int(n) for s, n in sorted(counts.items())})
    return ordered


def partial_note(study: StudyInfo) -> str | None:
    """The warning a study ended by Ctrl-C gets at the top of its report (None otherwise)."""
    if study.interrupted is None:
        return None
    done, planned = study.interrupted.get("finished"), study.interrupted.get("planned")
    return (
        f"**Partial report: the study was interrupted** with {cell(done)} of {cell(planned)} "
        f"trials finished; continue it with `python -m study.run {study.name} --resume` "
        "(add the --smoke / --storage it was started with)."
    )


def header_section(study: StudyInfo, trials: pd.DataFrame, n_analysed: int) -> str:
    counts = status_counts(trials)
    by_status = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none yet"
    direction = "higher is better" if study.mode == "max" else "lower is better"
    stopped = counts.get("stopped_early", 0)
    left_out = (
        f" {stopped} stopped-early trial{'' if stopped == 1 else 's'} "
        f"{'is' if stopped == 1 else 'are'} left out of the best trials and the comparisons: "
        "their last value is from an earlier step, and comparing it with final values would "
        "compare steps, not settings (see Flags and the curves)."
        if stopped
        else ""
    )
    note = partial_note(study)
    return "\n".join(
        [
            f"# Study report: {study.name}",
            "",
            *([note, ""] if note else []),
            f"**{len(trials)} trials**: {by_status}.",
            "",
            f"Objective: `{study.objective}` ({direction}), final value per trial. "
            f"Max steps: {study.max_steps if study.max_steps is not None else 'unknown'}. "
            f"Means and differences use {n_analysed} trial{'' if n_analysed == 1 else 's'} "
            "that ran to the end with a final objective value and did not diverge." + left_out,
        ]
    )


def shown_keys(study: StudyInfo, trials: pd.DataFrame) -> list[str]:
    """Searched keys from study.json; when it lists none, the config keys that vary."""
    keys = [k for k in study.searched_keys if k in trials.columns]
    if keys:
        return keys
    return varying_columns(trials, config_columns(trials))


def best_trials_section(study: StudyInfo, trials: pd.DataFrame) -> str:
    analysed = analysis_set(trials, study.objective)
    objective = final_column(study.objective)
    if analysed.empty:
        return "## Best trials\n\nNo trial has a final objective value yet."
    best = analysed.sort_values(objective, ascending=study.mode == "min").head(TOP_TRIALS)
    keys = shown_keys(study, trials)
    extra = [m for m in ("val/psnr_fg", "val/mask_iou") if m != study.objective]
    headers = ["rank", "trial", "status", f"final {study.objective}", f"best {study.objective}"]
    headers += [f"final {m}" for m in extra] + ["steps", "pictures", *[f"`{k}`" for k in keys]]
    rows = []
    for rank, (_, row) in enumerate(best.iterrows(), start=1):
        rows.append(
            [
                str(rank),
                f"`{row['trial_id']}`",
                row["status"],
                _number(study.objective, row[objective]),
                _number(study.objective, row[best_column(study.objective)]),
                *[_number(m, row[final_column(m)]) for m in extra],
                cell(row["steps_run"]),
                pictures_cell(row),
                *[cell(row[k]) for k in keys],
            ]
        )
    return f"## Best trials (top {TOP_TRIALS} by final `{study.objective}`)\n\n" + table(
        headers, rows
    )


def _level_rows(comparison: FactorComparison) -> list[list[str]]:
    rows = []
    for metric in comparison.metrics:
        for level, estimate in zip(
            comparison.factor.levels, (metric.baseline, metric.treatment), strict=True
        ):
            rows.append(
                [
                    f"`{metric.metric}`",
                    level.name,
                    str(estimate.n),
                    _number(metric.metric, estimate.mean),
                    _number(metric.metric, estimate.std),
                    _interval(metric.metric, estimate),
                ]
            )
    return rows


def _difference_rows(comparison: FactorComparison) -> list[list[str]]:
    rows = []
    for metric in comparison.metrics:
        paired, welch = metric.paired, metric.welch
        rows.append(
            [
                f"`{metric.metric}`",
                _number(metric.metric, paired.mean) if paired.n else EMPTY_CELL,
                _interval(metric.metric, paired),
                str(paired.n)
                if metric.n_pairs in (0, paired.n)
                else f"{paired.n} ({metric.n_pairs})",
                _number(metric.metric, welch.mean),
                _interval(metric.metric, welch),
                *_seed_verdict_cells(metric.metric, metric.verdict),
            ]
        )
    return rows


def _seed_verdict_cells(metric: str, verdict: Verdict | None) -> list[str]:
    """seeds won, p (Holm-adjusted for the objective when several factors share it), margin,
    verdict; dashes for metrics without a margin (no verdict is defined for them)."""
    if verdict is None:
        return [EMPTY_CELL] * 4
    return [
        f"{verdict.seeds_won} of {verdict.n_seeds}",
        cell(verdict.p_decision, 3),
        f"±{_number(metric, verdict.margin)}",
        verdict.verdict,
    ]


def _item_interval(metric: str, low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return EMPTY_CELL
    return f"[{_item_number(metric, low)}, {_item_number(metric, high)}]"


def _seeds_needed(c: paired.ItemComparison) -> str:
    r = c.result
    if r.n_seeds < 2:
        return ">= 2"
    p = plan(r.sd_seeds, r.n_seeds, c.margin, r.alpha)
    return f"{p.detect}-{p.detect_upper} / {p.equivalent}-{p.equivalent_upper}"


def _verdict_rows(items: paired.FactorItemComparison) -> list[list[str]]:
    """Confirmatory row first, then every other metric x role (exploratory)."""
    ordered = sorted(items.comparisons, key=lambda c: not c.confirmatory)
    rows = []
    for c in ordered:
        r, metric = c.result, c.metric
        p_value = c.p_holm if c.confirmatory else r.p_value
        rows.append(
            [
                "**confirmatory**" if c.confirmatory else "exploratory",
                c.role,
                f"`{metric}`",
                _item_number(metric, r.estimate),
                _item_interval(metric, r.ci_low, r.ci_high),
                f"{r.seeds_won} of {r.n_seeds}",
                cell(p_value, 3),
                f"±{_item_number(metric, c.margin)}",
                f"**{r.verdict}**" if c.confirmatory else r.verdict,
                f"{r.n_seeds} x {r.n_items} ({r.n_rows})",
                _undefined_cell(r),
                _seeds_needed(c),
            ]
        )
    return rows


def _undefined_cell(r: Verdict) -> str:
    if not (r.undefined_treatment or r.undefined_baseline):
        return "0"
    return f"{r.undefined_treatment} / {r.undefined_baseline}"


def _item_number(metric: str, value: float) -> str:
    return cell(float(value), 2 if metric in paired.METRIC_UNITS else 3)


def _camera_rows(items: paired.FactorItemComparison) -> list[list[str]]:
    rows = []
    metric = items.primary[0]
    for _, row in items.per_camera.iterrows():
        rows.append(
            [
                str(int(row["camera"])),
                row["role"],
                _item_number(metric, row["mean"]),
                _item_interval(metric, float(row["ci_low"]), float(row["ci_high"])),
                f"{int(row['seeds_won'])} of {int(row['n_seeds'])}",
                row["verdict"],
                _items_cell(int(row["n_items"]), int(row.get("n_blocks", 0) or 0)),
            ]
        )
    return rows


def _items_cell(n_items: int, n_blocks: int) -> str:
    """'24' or, when items come in blocks of correlated ones, '24 (4 blocks)'."""
    return f"{n_items} ({n_blocks} blocks)" if 0 < n_blocks < n_items else str(n_items)


def item_level_section(items: paired.FactorItemComparison) -> str:
    """The factor's item-level verdicts: the confirmatory question first, then every other
    metric and view role, and per rig camera (all exploratory)."""
    base, treat = items.factor.baseline.name, items.factor.treatment.name
    metric, role = items.primary
    headers = [
        "question",
        "views",
        "metric",
        f"{treat} − {base}",
        "95% CI (t over seeds)",
        f"seeds {treat} better",
        "p (Holm if confirmatory)",
        "margin",
        "verdict",
        "seeds x items (item-views)",
        "undefined treat / base",
        "seeds needed: detect / equivalent",
    ]
    camera_headers = [
        "camera",
        "role",
        f"`{metric}` {treat} − {base}",
        "95% CI (t over seeds)",
        f"seeds {treat} better",
        "verdict (uncorrected)",
        "items",
    ]
    return "\n\n".join(
        [
            f"#### Item level ({items.n_trials} evaluated trials, {items.n_pairs} pair groups)",
            f"**{items.sentence}**",
            f"Paired differences on the identical (item, view) set, averaged per seed (the "
            f"unit); Student t interval over the per-seed means (df = seeds − 1). The "
            f"confirmatory question is `{metric}` on {role} target views, Holm-corrected across "
            "the study's factors; every other row is exploratory (uncorrected p). Undefined "
            "values (empty predictions) are scored at the metric's floor, counted per arm. "
            "Seeds needed: for 80% power to detect a difference of the margin / to show "
            "equivalence within it, at the point estimate of these seeds' spread and at its "
            "80% upper confidence limit:",
            table(headers, _verdict_rows(items)),
            "Per rig camera, exploratory (uncorrected; six intervals, so one may miss by chance):",
            table(camera_headers, _camera_rows(items)),
        ]
    )


def evaluation_section(evaluation: paired.StudyEvaluation | None) -> str:
    """How the item-level evaluation was done (or why it was refused / is missing)."""
    title = "## Evaluation protocol (item level)"
    if evaluation is None or not evaluation.evaluated:
        analysed = evaluation.n_analysed if evaluation else 0
        return (
            f"{title}\n\nNo analysed trial has an item-level evaluation "
            f"(runs/<trial>/eval/items.parquet) yet; of {analysed} analysed trials, none can be "
            "compared item by item. Run `python -m analysis.evaluate RUN_DIR` per run folder."
        )
    if evaluation.refusal:
        return (
            f"{title}\n\n**Item-level comparisons refused: {evaluation.refusal}.** Trials "
            "evaluated under different protocols are never mixed; re-evaluate them with one "
            "protocol (`python -m analysis.evaluate`)."
        )
    p = evaluation.protocol or {}
    steps = sorted(set(evaluation.checkpoint_steps.values()), key=lambda v: (v is None, v))
    missing = evaluation.n_analysed - len(evaluation.evaluated)
    lines = [
        title,
        "",
        f"{len(evaluation.evaluated)} of {evaluation.n_analysed} analysed trials evaluated"
        + (
            f" ({missing} without an evaluation are left out of item-level tables)"
            if missing
            else ""
        )
        + f" on the **{p.get('split', '?')} split** `{p.get('dataset_path', '?')}`: "
        f"{p.get('n_items', '?')} items, {p.get('n_rows', '?')} item-views per trial "
        f"(item-set hash `{str(p.get('item_set_hash', ''))[:12]}`).",
        "",
        f"Checkpoint rule **{p.get('checkpoint_rule')}**"
        + (f" by `{p['checkpoint_objective']}`" if p.get("checkpoint_objective") else "")
        + f" (steps evaluated: {', '.join(str(s) for s in steps)}); views {p.get('view_order')}; "
        f"silhouettes: true = alpha > {p.get('gt_alpha_threshold')}, predicted = mean |render − "
        f"background| > {p.get('pred_mask_threshold')}; image size {p.get('image_size')} px; "
        f"metric definitions v{p.get('metrics_version')}.",
        "",
        "Equivalence margins: "
        + ", ".join(f"`{k}` ±{v:g}" for k, v in evaluation.margins.items())
        + f" (from {evaluation.margin_source}; `study.json` `margins` or `python -m "
        "analysis.report STUDY --margin psnr_fg=0.3` set them; the defaults are the smallest "
        "differences a researcher would act on, see `analysis/verdicts.py`). Verdicts "
        "(analysis.verdicts, seeds as the unit): equivalent (TOST: the 90% interval inside "
        "± margin), else better / worse (t test over per-seed means, p < 0.05; Holm across "
        "the factors for the confirmatory question), else inconclusive; fewer than 2 seeds: "
        "too few seeds (an estimate, no verdict).",
        "",
        f"Confirmatory question: `{evaluation.primary[0]}` on {evaluation.primary[1]} target "
        f"views, one per factor ({len(evaluation.comparisons)} in the Holm family); every "
        "other metric, view role and camera is exploratory.",
    ]
    if evaluation.shared_cameras is not None:
        own = evaluation.own_views if evaluation.own_views is not None else pd.DataFrame()
        metric = evaluation.primary[0]
        lines += [
            "",
            "The trials differ in their input cameras, so levels are compared only on camera"
            f"(s) {', '.join(map(str, evaluation.shared_cameras))}, a target of every trial "
            "(a camera one level sees as input would reward copying it). Each input set's own "
            f"views, described apart (mean `{metric}` over its trials; not compared: each row "
            "is scored on different cameras; a run trained with "
            "`training.dataset.target_has_input: false` never learns to render its input "
            "cameras, so its input rows show extrapolation, not reconstruction):",
            "",
            table(
                ["inputs (cameras)", "role", "trials", "item-views", f"mean `{metric}`"],
                [
                    [
                        str(r["inputs"]),
                        str(r["role"]),
                        str(r["trials"]),
                        str(r["item_views"]),
                        _item_number(metric, float(r["mean"])),
                    ]
                    for _, r in own.iterrows()
                ],
            ),
        ]
    if p.get("split") == "validation":
        lines += [
            "",
            "Note: no test split was given, so trials were evaluated on the validation list "
            "(which also chose `best` checkpoints).",
        ]
    return "\n".join(lines)


def factor_section(
    comparison: FactorComparison, plot_name: str, items: paired.FactorItemComparison | None = None
) -> str:
    factor = comparison.factor
    base, treat = factor.baseline.name, factor.treatment.name
    keys = ", ".join(f"`{k}`" for k in factor.keys)
    level_table = table(
        ["metric", "level", "n", "mean", "std", "95% CI of mean"], _level_rows(comparison)
    )
    diff_headers = [
        "metric",
        f"paired {treat} − {base}",
        "95% CI (paired t over seeds)",
        "seeds (pairs)",
        f"unpaired {treat} − {base}",
        "95% CI (Welch)",
        f"seeds {treat} better",
        "p (Holm for the objective)",
        "margin",
        "verdict (paired)",
    ]
    return "\n\n".join(
        [
            f"### {factor.title}: {base} vs {treat} ({keys})",
            f"**{comparison.sentence}**",
            f"Final values of the {comparison.n_trials} analysed trials, per level:",
            level_table,
            "Differences of final values (pairs: same seed and otherwise identical config; "
            "the pairs of one seed are averaged, the seed is the unit"
            + ("; validation, exploratory beside the test verdict below" if items else "")
            + "):",
            table(diff_headers, _difference_rows(comparison)),
            f"![{factor.title}: final objective per level]({plot_name})",
            *([item_level_section(items)] if items is not None else []),
            *([note] if (note := agreement_note(comparison, items)) else []),
        ]
    )


def _seed_direction(comparison: FactorComparison, metric: str) -> str | None:
    """better / worse / None (no difference shown) of the seed-level paired interval of a
    higher-is-better metric; None also when the metric is not in the table."""
    found = next((m for m in comparison.metrics if m.metric == metric), None)
    if found is None or not found.paired.has_ci or found.paired.n < 2:
        return None
    if found.paired.ci_low > 0:
        return "better"
    if found.paired.ci_high < 0:
        return "worse"
    return None


def agreement_note(
    comparison: FactorComparison, items: paired.FactorItemComparison | None
) -> str | None:
    """Why the validation (seed-level) and test (item-level) lines disagree, when they do."""
    if items is None:
        return None
    metric = items.primary[0]
    seed = _seed_direction(comparison, f"val/{metric}")
    test = items.confirmatory().verdict
    shown = test in ("better", "worse")
    if seed == test or (seed is None and not shown):
        return None
    treat = comparison.factor.treatment.name
    seed_words = f"{treat} {seed}" if seed else "no difference shown"
    return (
        f"*Validation and test disagree on `{metric}` here (validation: {seed_words}; test: "
        f"{test}).* They are different measurements: the validation line compares each "
        "trial's final value on the validation list, uncorrected; the test verdict compares "
        "the evaluated checkpoints on the test items and is the confirmatory one (Holm across "
        "the factors). At these seed counts either can miss a real difference; the seeds-needed "
        "line says how many seeds would settle it."
    )


def factors_section(
    comparisons: Sequence[FactorComparison],
    plot_names: Mapping[str, str],
    evaluation: paired.StudyEvaluation | None = None,
) -> str:
    parts = ["## Factor comparisons"]
    by_factor = {c.factor.name: c for c in (evaluation.comparisons if evaluation else ())}
    if not comparisons and not by_factor:
        parts.append("No factor has both of its levels among trials with a final objective value.")
    parts += [
        factor_section(c, plot_names[c.factor.name], by_factor.get(c.factor.name))
        for c in comparisons
    ]
    # item-level questions without a two-level seed table: adjacent levels of a multi-level
    # factor (e.g. 2 vs 3 input views; their validation values are in the levels table)
    seed_level = {c.factor.name for c in comparisons}
    parts += [
        f"### {items.factor.title} (`{items.factor.key}`)\n\n{item_level_section(items)}"
        for name, items in by_factor.items()
        if name not in seed_level
    ]
    return "\n\n".join(parts)


def _flag_rows(trials: pd.DataFrame, max_steps: int | None) -> list[list[str]]:
    rows = []
    for _, row in trials.iterrows():
        flags, details = [], []
        if row["flag_background_collapse"]:
            flags.append("background collapse")
            details.append(
                f"final mask IoU {cell(row[final_column('val/mask_iou')], 3)} while train loss "
                f"fell to {cell(row[final_column('train/loss')], 4)}"
            )
        covers = row.get("flag_mask_covers_image")
        if covers is not None and not pd.isna(covers) and bool(covers):
            flags.append("mask covers the image")
            details.append(
                f"predicted foreground {cell(row['eval/pred_fg_fraction'], 2)} of the image vs "
                f"{cell(row['eval/gt_fg_fraction'], 3)} true; item mask IoU "
                f"{cell(row['eval/mask_iou'], 3)}"
            )
        if row["flag_diverged"]:
            flags.append("diverged")
            details.append(f"final train loss {cell(row[final_column('train/loss')])}")
        if row["flag_stopped_early"]:
            flags.append("stopped early")
            details.append(f"last step {cell(row['last_step'])} of {max_steps}")
        if row["status"] == "errored":
            flags.append("errored")
            details.append(cell(row["error"]))
        if flags:
            rows.append(
                [
                    f"`{row['trial_id']}`",
                    row["status"],
                    ", ".join(flags),
                    "; ".join(details),
                    pictures_cell(row),
                ]
            )
    return rows


def flags_section(trials: pd.DataFrame, max_steps: int | None) -> str:
    rows = _flag_rows(trials, max_steps)
    if not rows:
        return "## Flags\n\nNo trial flagged."
    counts = {
        "background collapse": int(trials["flag_background_collapse"].sum()),
        "mask covers the image": int(
            trials.get("flag_mask_covers_image", pd.Series(dtype="boolean")).fillna(False).sum()
        ),
        "diverged": int(trials["flag_diverged"].sum()),
        "stopped early": int(trials["flag_stopped_early"].sum()),
        "errored": int((trials["status"] == "errored").sum()),
    }
    summary = ", ".join(f"{n} {name}" for name, n in counts.items())
    return "\n\n".join(
        ["## Flags", summary + ".", table(["trial", "status", "flags", "detail", "pictures"], rows)]
    )


def importance_section(importance: Importance) -> str:
    if not importance.values:
        return f"## Parameter importance (Optuna)\n\n{importance.note}"
    rows = [[f"`{name}`", f"{value:.3f}"] for name, value in importance.values.items()]
    return "\n\n".join(
        [
            "## Parameter importance (Optuna)",
            importance.note,
            table(["parameter", "importance"], rows),
        ]
    )


def plots_section(plots: Mapping[str, str]) -> str:
    lines = ["## Plots", ""]
    lines += [f"- [{title}]({name})" for title, name in plots.items()]
    return "\n".join(lines)


def files_section() -> str:
    return (
        "## Files\n\n"
        "- [trials.parquet](trials.parquet): one row per trial; columns `final/<metric>`, "
        "`best/<metric>`, `best_step/<metric>`, dotted config keys, status and flags.\n"
        "- [curves.parquet](curves.parquet): one row per trial and reported step.\n"
        "- [items.parquet](items.parquet): one row per evaluated trial x test item x view "
        "(item-level metrics, see `trainables/gslrm/metrics.py`).\n"
        "- Column scheme: docstring of `analysis/tables.py`."
    )


def render_report(
    study: StudyInfo,
    trials: pd.DataFrame,
    comparisons: Sequence[FactorComparison],
    importance: Importance,
    plots: Mapping[str, str],
    factor_plots: Mapping[str, str],
    evaluation: paired.StudyEvaluation | None = None,
    *,
    after_header: Sequence[str] = (),
    after_factors: Sequence[str] = (),
) -> str:
    """The whole report.md text. ``plots``: title -> file name of every plot. ``after_header``
    and ``after_factors``: finished sections (e.g. the compute line; Pareto front,
    interactions, tuning curves) placed after the header and after the factor comparisons."""
    n_analysed = len(analysis_set(trials, study.objective))
    sections = [
        header_section(study, trials, n_analysed),
        *after_header,
        best_trials_section(study, trials),
        evaluation_section(evaluation),
        factors_section(comparisons, factor_plots, evaluation),
        *after_factors,
        flags_section(trials, study.max_steps),
        importance_section(importance),
        plots_section(plots),
        files_section(),
    ]
    return "\n\n".join(sections) + "\n"


# --- issue 13: compute line, multi-level factors, interactions, Pareto front, tuning curves


def compute_line(summary: ComputeSummary, unit: str) -> str:
    """The header line on compute: spent by all trials, saved by early stopping (estimate)."""
    saved = (
        f"early stopping saved about {summary.saved_s:.0f} {unit} "
        f"({summary.n_stopped} stopped trial{'' if summary.n_stopped == 1 else 's'}: each one's "
        "remaining steps at its own speed)"
        if summary.n_stopped
        else "no trial was stopped early"
    )
    return f"**Compute**: {summary.spent_s:.0f} {unit} spent by all trials; {saved}."


def levels_section(summaries: Sequence[LevelSummary], plot_names: Mapping[str, str]) -> str:
    parts = ["## Multi-level factors"]
    for summary in summaries:
        factor = summary.factor
        rows = []
        for level in summary.levels:
            for metric in summary.metrics:
                estimate = summary.estimates[(level, metric)]
                rows.append(
                    [
                        cell(level, 4 if level != int(level) else 0),
                        f"`{metric}`",
                        str(estimate.n),
                        _number(metric, estimate.mean) if estimate.n else EMPTY_CELL,
                        _number(metric, estimate.std) if estimate.n > 1 else EMPTY_CELL,
                        _interval(metric, estimate),
                    ]
                )
        parts += [
            f"### {factor.title} (`{factor.key}`): {len(summary.levels)} levels",
            "Final values per level over the analysed trials (95% t interval of the mean):",
            table(["level", "metric", "n", "mean", "std", "95% CI of mean"], rows),
        ]
        if factor.name in plot_names:
            parts.append(f"![{factor.title}: final values per level]({plot_names[factor.name]})")
    return "\n\n".join(parts)


def _cell_text(metric: str, estimate: Estimate) -> str:
    if not estimate.n:
        return EMPTY_CELL
    interval = f" {_interval(metric, estimate)}" if estimate.has_ci else ""
    return f"{_number(metric, estimate.mean)}{interval} (n={estimate.n})"


def interaction_block(found: Interaction) -> str:
    first, second, metric = found.first, found.second, found.metric
    headers = [f"{first.title} \\ {second.title}", *[lv.name for lv in second.levels]]
    rows = [
        [a.name, *[_cell_text(metric, found.cells[(a.name, b.name)]) for b in second.levels]]
        for a in first.levels
    ]
    contrast = found.contrast
    value = _number(metric, contrast.mean) if contrast.n else EMPTY_CELL
    return "\n\n".join(
        [
            f"### {first.title} × {second.title}: `{metric}`",
            f"**{found.sentence}**",
            "Cell means of final values, 95% t interval, trials per cell:",
            table(headers, rows),
            f"Interaction contrast (({second.treatment.name} − {second.baseline.name}) at "
            f"{first.treatment.name} minus at {first.baseline.name}): {value}, 95% CI (paired t "
            f"over {contrast.n} matched groups) {_interval(metric, contrast)}.",
        ]
    )


def interactions_section(found: Sequence[Interaction]) -> str:
    return "\n\n".join(["## Interactions of crossed factors", *map(interaction_block, found)])


def pareto_section(
    front: pd.DataFrame,
    objectives: Sequence[str],
    modes: Sequence[str],
    keys: Sequence[str],
    hypervolume: float,
    reference: Sequence[float],
    n_finished: int,
    plot_names: Mapping[str, str],
) -> str:
    """The non-dominated finished trials, each with its config and a link to its run folder."""
    names = " and ".join(
        f"`{m}` ({'max' if mode == 'max' else 'min'})"
        for m, mode in zip(objectives, modes, strict=True)
    )
    headers = ["trial", "optuna #", *[f"final `{m}`" for m in objectives], "run folder"]
    headers += ["pictures"]
    headers += [f"`{k}`" for k in keys]
    rows = []
    for _, row in front.iterrows():
        number = row.get("optuna_number")
        rows.append(
            [
                f"`{row['trial_id']}`",
                EMPTY_CELL if number is None or pd.isna(number) else str(int(number)),
                *[_number(m, row[final_column(m)]) for m in objectives],
                f"[runs/{row['trial_id']}](../runs/{row['trial_id']})",
                pictures_cell(row),
                *[cell(row[k]) if k in row.index else EMPTY_CELL for k in keys],
            ]
        )
    ref = ", ".join(f"{m} = {v:g}" for m, v in zip(objectives, reference, strict=True))
    parts = [
        "## Pareto front",
        f"Objectives: {names}. {len(front)} of {n_finished} finished trials are non-dominated "
        "(no other finished trial is at least as good in both and better in one); trials "
        "stopped early or failed are left out, their values are not final.",
        table(headers, rows) if rows else "No finished trial has both objective values yet.",
        f"Hypervolume of the front: {hypervolume:.4g} (reference point {ref}; fixed, so "
        "studies are comparable).",
    ]
    parts += [f"![{title}]({name})" for title, name in plot_names.items()]
    return "\n\n".join(parts)


def tuning_section(
    curve: pd.DataFrame, objective: str, mode: str, unit: str, plot_name: str
) -> str:
    """Best-so-far after k trials (Optuna's proposal order) and after the compute spent."""
    finite = curve[np.isfinite(curve["best"].astype(float))]
    if finite.empty:
        summary = "No trial has a final objective value yet."
    else:
        best = finite["best"].iloc[-1]
        first = finite[finite["best"] == best].iloc[0]
        summary = (
            f"Best final `{objective}` {_number(objective, best)} ({'max' if mode == 'max' else 'min'}), "
            f"first reached at trial {int(first['n_trials'])} of {len(curve)} after "
            f"{first['compute_s']:.0f} of {curve['compute_s'].iloc[-1]:.0f} {unit}."
        )
    return "\n\n".join(
        [
            "## Tuning curves",
            summary,
            "Best final value so far after each trial in Optuna's proposal order, against the "
            "trial count and the compute the trials spent; a trial that did not finish (stopped "
            "early, diverged, errored) counts as spent compute but never as a result.",
            f"![Best-so-far {objective} against trials and compute]({plot_name})",
        ]
    )
