"""The report's PNG plots, drawn with matplotlib's object API (Agg, no pyplot global state).

Every plot is written even without data ("no data" in the middle), so the report's links
never break.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.compare import level_labels
from analysis.factors import DATASET_TYPE, Factor
from analysis.metrics import metric_info
from analysis.tables import final_column

FIGSIZE = (7.0, 4.8)
DPI = 110
LEVEL_COLOURS = {"random": "tab:orange", "mouse": "tab:blue"}
UNKNOWN_COLOUR = "tab:gray"


def axis_label(metric: str) -> str:
    info = metric_info(metric)
    return f"{info.label} ({info.unit})" if info.unit else info.label


def _figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _no_data(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, fontsize=14)


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png")
    return path


def dataset_types(trials: pd.DataFrame) -> dict[str, str]:
    """trial_id -> dataset type ("random", "mouse" or "unknown")."""
    labels = level_labels(trials, DATASET_TYPE).fillna("unknown")
    return dict(zip(trials["trial_id"].astype(str), labels.astype(str), strict=True))


def plot_fg_psnr_vs_mask_iou(trials: pd.DataFrame, path: Path) -> Path:
    """Final foreground PSNR against final mask IoU, one point per trial."""
    figure, axes = _figure()
    x = trials[final_column("val/mask_iou")].astype(float).to_numpy()
    y = trials[final_column("val/psnr_fg")].astype(float).to_numpy()
    types = trials["trial_id"].astype(str).map(dataset_types(trials)).to_numpy()
    finite = np.isfinite(x) & np.isfinite(y)
    for kind in sorted(set(types[finite])):
        chosen = finite & (types == kind)
        colour = LEVEL_COLOURS.get(kind, UNKNOWN_COLOUR)
        axes.scatter(
            x[chosen], y[chosen], label=f"{kind} ({chosen.sum()})", color=colour, alpha=0.8
        )
    if finite.any():
        axes.legend(title="dataset type")
    else:
        _no_data(axes)
    axes.set_title("Final foreground PSNR vs mask IoU per trial")
    axes.set_xlabel(f"final {axis_label('val/mask_iou')}")
    axes.set_ylabel(f"final {axis_label('val/psnr_fg')}")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_learning_curves(
    curves: pd.DataFrame, trials: pd.DataFrame, objective: str, path: Path
) -> Path:
    """The objective against trainer step, one line per trial, coloured by dataset type."""
    figure, axes = _figure()
    types = dataset_types(trials)
    seen: set[str] = set()
    drawn = False
    if objective in curves.columns:
        for ident, curve in curves.groupby("trial_id", sort=True):
            values = curve[objective].astype(float)
            if not np.isfinite(values).any():
                continue
            kind = str(types.get(ident, "unknown"))
            axes.plot(
                curve["step"].to_numpy(),
                values.to_numpy(),
                color=LEVEL_COLOURS.get(kind, UNKNOWN_COLOUR),
                alpha=0.7,
                marker=".",
                label=None if kind in seen else kind,
            )
            seen.add(kind)
            drawn = True
    if drawn:
        axes.legend(title="dataset type")
    else:
        _no_data(axes)
    axes.set_title(f"Learning curves: {metric_info(objective).label} per trial")
    axes.set_xlabel("trainer step")
    axes.set_ylabel(axis_label(objective))
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_factor(trials: pd.DataFrame, factor: Factor, objective: str, path: Path) -> Path:
    """Box plot of the final objective per level of the factor, trials overlaid as points."""
    figure, axes = _figure()
    labels = level_labels(trials, factor)
    values = trials[final_column(objective)].astype(float)
    groups = [
        values[(labels == level.name) & np.isfinite(values)].to_numpy() for level in factor.levels
    ]
    if any(len(g) for g in groups):
        positions = np.arange(1, len(groups) + 1)
        # Black medians: the level colours are reserved for the points.
        axes.boxplot(
            groups,
            positions=positions,
            widths=0.5,
            showfliers=False,
            medianprops={"color": "black"},
        )
        # Deterministic jitter: the same data always draws the same picture.
        rng = np.random.default_rng(0)
        for position, group, level in zip(positions, groups, factor.levels, strict=True):
            jitter = rng.uniform(-0.08, 0.08, size=len(group))
            colour = LEVEL_COLOURS.get(level.name, "tab:blue")
            axes.scatter(position + jitter, group, color=colour, alpha=0.8, zorder=3)
        names = [f"{lv.name}\n(n={len(g)})" for lv, g in zip(factor.levels, groups, strict=True)]
        axes.set_xticks(positions, names)
    else:
        _no_data(axes)
    axes.set_title(f"{factor.title}: final {metric_info(objective).label}")
    axes.set_xlabel(f"{factor.title} ({', '.join(factor.keys)})")
    axes.set_ylabel(f"final {axis_label(objective)}")
    axes.grid(alpha=0.3, axis="y")
    return _save(figure, path)


# --- issue 13: Pareto front, hypervolume, tuning curves, multi-level factors


def plot_pareto_front(
    finished: pd.DataFrame, front: pd.DataFrame, objectives: list[str], path: Path
) -> Path:
    """Finished trials in the plane of two objectives; the non-dominated ones joined as a
    staircase (the region they dominate lies below-left for two maximised objectives)."""
    figure, axes = _figure()
    x_metric, y_metric = objectives[0], objectives[1]
    x = finished[final_column(x_metric)].astype(float).to_numpy()
    y = finished[final_column(y_metric)].astype(float).to_numpy()
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.any():
        axes.scatter(x[finite], y[finite], color=UNKNOWN_COLOUR, alpha=0.6, label="finished trial")
        fx = front[final_column(x_metric)].astype(float).to_numpy()
        fy = front[final_column(y_metric)].astype(float).to_numpy()
        order = np.argsort(fx)
        axes.step(fx[order], fy[order], where="post", color="tab:red", alpha=0.6)
        axes.scatter(fx, fy, color="tab:red", zorder=3, label=f"non-dominated ({len(front)})")
        axes.legend()
    else:
        _no_data(axes)
    axes.set_title("Pareto front of the finished trials")
    axes.set_xlabel(f"final {axis_label(x_metric)}")
    axes.set_ylabel(f"final {axis_label(y_metric)}")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_hypervolume(hypervolume: np.ndarray, path: Path) -> Path:
    """hypervolume: [N] after the first k trials (Optuna's order) -> line over k = 1..N."""
    figure, axes = _figure()
    if len(hypervolume):
        axes.plot(np.arange(1, len(hypervolume) + 1), hypervolume, marker=".", color="tab:red")
    else:
        _no_data(axes)
    axes.set_title("Hypervolume of the Pareto front over trials")
    axes.set_xlabel("trials (Optuna trial order)")
    axes.set_ylabel("hypervolume")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_tuning_curves(curve: pd.DataFrame, objective: str, unit: str, path: Path) -> Path:
    """Best-so-far objective against trial count (left) and cumulative compute (right).

    curve: analysis.tuning.best_so_far's frame (n_trials, compute_s, value, best)."""
    figure = Figure(figsize=(FIGSIZE[0] * 1.6, FIGSIZE[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    by_trial, by_compute = figure.subplots(1, 2, sharey=True)
    best = curve["best"].astype(float).to_numpy()
    finite = np.isfinite(best)
    for axes, column, label in (
        (by_trial, "n_trials", "trials (proposal order)"),
        (by_compute, "compute_s", f"cumulative trial compute ({unit})"),
    ):
        if finite.any():
            x = curve[column].astype(float).to_numpy()
            axes.step(x[finite], best[finite], where="post", color="tab:blue", label="best so far")
            axes.scatter(x, curve["value"].astype(float), color=UNKNOWN_COLOUR, alpha=0.6, s=12)
        else:
            _no_data(axes)
        axes.set_xlabel(label)
        axes.grid(alpha=0.3)
    by_trial.set_ylabel(f"final {axis_label(objective)}")
    figure.suptitle(f"Tuning curve: best {metric_info(objective).label} so far")
    return _save(figure, path)


def plot_levels(summary, metric: str, path: Path) -> Path:
    """Mean of `metric` per level with its 95% interval (analysis.levels.LevelSummary)."""
    figure, axes = _figure()
    levels = np.array(summary.levels, dtype=float)
    estimates = [summary.estimates.get((level, metric)) for level in summary.levels]
    means = np.array([e.mean if e is not None and e.n else np.nan for e in estimates])
    if np.isfinite(means).any():
        low = np.array([e.ci_low if e is not None and e.has_ci else np.nan for e in estimates])
        high = np.array([e.ci_high if e is not None and e.has_ci else np.nan for e in estimates])
        errors = np.nan_to_num(np.vstack([means - low, high - means]), nan=0.0)
        axes.errorbar(levels, means, yerr=errors, marker="o", capsize=4, color="tab:blue")
    else:
        _no_data(axes)
    axes.set_title(f"{summary.factor.title}: final {metric_info(metric).label} (95% CI)")
    axes.set_xlabel(f"{summary.factor.title} ({summary.factor.key})")
    axes.set_ylabel(f"final {axis_label(metric)}")
    axes.grid(alpha=0.3)
    return _save(figure, path)
