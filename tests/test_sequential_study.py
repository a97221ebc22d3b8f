"""--until-decided without Ray running: the plan flags, the seed searcher's proposals, looks,
stop, study.json record, and its state surviving save / restore (what --resume relies on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study import sequential
from study.plan import StudyError, make_plan, resumed_args
from study.run import parser, planned_trials
from study.seed_searcher import SeedSearcher, make_sequential_searcher
from study.studies import SEED_KEY

MASK = "training.losses.masked_l2_loss"
BG = "training.losses.background_loss_weight"


def plan_for(*argv: str, storage: Path):
    return make_plan(parser().parse_args([*argv, "--storage", str(storage)]))


def test_flags_make_the_plan_and_are_checked(tmp_path):
    plan = plan_for(
        "mask_loss_ablation", "--smoke", "--until-decided", "--max-seeds", "6",
        "--margin", "psnr_fg=0.3", storage=tmp_path,
    )  # fmt: skip
    sequential.check_plan(plan)
    assert plan.until_decided and plan.max_seeds == 6
    assert sequential.margins_of(plan)["psnr_fg"] == 0.3
    assert sequential.seed_schedule(plan) == ((0, 1, 2), 6)
    assert planned_trials(plan) == 4 * 6  # 4 cells x up to 6 seeds
    record = sequential.initial_record(plan)
    assert record["margins"]["psnr_fg"] == 0.3
    assert record["sequential"]["max_seeds"] == 6 and record["sequential"]["first_look"] == 3
    for bad in (
        ["mouse_loss_sweep", "--until-decided"],  # not a grid over seeds
        ["mask_loss_ablation", "--until-decided", "--max-seeds", "1"],
        ["mask_loss_ablation", "--until-decided", "--margin", "psnr_fg=-1"],
        ["mask_loss_ablation", "--until-decided", "--margin", "nope=1"],
        ["mask_loss_ablation", "--max-seeds", "5"],  # without --until-decided
    ):
        with pytest.raises(StudyError):
            sequential.check_plan(plan_for(*bad, storage=tmp_path))


def test_a_one_seed_preset_is_topped_up_to_two(tmp_path):
    plan = plan_for("view_count_ablation", "--smoke", "--until-decided", storage=tmp_path)
    assert sequential.seed_schedule(plan) == ((0, 1), 10)
    assert len(sequential.comparisons(sequential.grid_factors(plan))) == 4  # 2..5 views vs 1


def test_resume_keeps_the_sequential_flags_and_refuses_a_different_one(tmp_path):
    args = parser().parse_args(
        ["mask_loss_ablation", "--until-decided", "--max-seeds", "4", "--margin", "psnr_fg=0.3"]
    )
    stored = {"plan": {"until_decided": True, "max_seeds": 4, "margin_args": ["psnr_fg=0.3"]}}
    merged = resumed_args(parser().parse_args(["mask_loss_ablation", "--resume"]), stored)
    assert merged.until_decided is True and merged.max_seeds == 4
    assert tuple(merged.margin_args) == ("psnr_fg=0.3",)
    assert resumed_args(args, stored).max_seeds == 4  # the same flags again: fine
    with pytest.raises(StudyError, match="--max-seeds 5"):
        resumed_args(parser().parse_args(["mask_loss_ablation", "--max-seeds", "5"]), stored)


def test_seed_differences_average_the_pairs_of_a_seed():
    factors = {MASK: [False, True], BG: [0.0, 0.1]}
    cells = sequential.grid_cells(factors)
    # value = 10 + 2 * mask + 1 * bg_on + seed, with the mask effect 3 on seed 1
    values = {}
    for i, cell in enumerate(cells):
        for seed in (0, 1):
            mask = 2.0 + (1.0 if seed == 1 else 0.0)
            values[(i, seed)] = 10 + mask * cell[MASK] + (cell[BG] > 0) + seed
    diffs = sequential.seed_differences(values, cells, [0, 1], factors)
    assert diffs[MASK] == [2.0, 3.0]
    assert diffs[BG] == [1.0, 1.0]


def make_searcher(tmp_path: Path, first=(0, 1, 2), max_seeds=5) -> SeedSearcher:
    (tmp_path / "study.json").write_text(json.dumps({"study": "t", "sequential": {"rule": "r"}}))
    return SeedSearcher(
        factors={MASK: [False, True]},
        first_seeds=first,
        max_seeds=max_seeds,
        metric="val/psnr_fg",
        mode="max",
        margin=0.5,
        study_dir=str(tmp_path),
    )


def run_seed(searcher: SeedSearcher, effect, noise, ids: list[str]) -> list[dict]:
    """Take every suggestion available now, then complete them with psnr_fg = 20 + effect."""
    proposed = []
    while True:
        trial_id = f"t{len(ids)}"
        config = searcher.suggest(trial_id)
        if not isinstance(config, dict):
            break
        ids.append(trial_id)
        proposed.append((trial_id, config))
    for trial_id, config in proposed:
        value = 20 + effect(config[SEED_KEY]) * config[MASK] + noise(config[SEED_KEY])
        searcher.on_trial_complete(trial_id, {"val/psnr_fg": value})
    return [config for _, config in proposed]


def test_searcher_adds_seeds_until_the_cap_on_an_unclear_effect(tmp_path):
    searcher = make_searcher(tmp_path)
    ids: list[str] = []
    effects = {0: 2.0, 1: -2.0, 2: 1.0, 3: -1.5, 4: 0.5}
    first = run_seed(searcher, effects.get, lambda s: 0.0, ids)
    assert sorted((c[SEED_KEY], c[MASK]) for c in first) == [
        (s, m) for s in (0, 1, 2) for m in (False, True)
    ]
    assert searcher.seeds == [0, 1, 2, 3]  # undecided at the first look: one more seed
    second = run_seed(searcher, effects.get, lambda s: 0.0, ids)
    assert {c[SEED_KEY] for c in second} == {3}
    run_seed(searcher, effects.get, lambda s: 0.0, ids)
    assert searcher.suggest("late") == SeedSearcher.FINISHED
    record = json.loads((tmp_path / "study.json").read_text())["sequential"]
    assert record["rule"] == "r"  # what the study wrote at start is kept
    assert [look["seeds"] for look in record["looks"]] == [3, 4, 5]
    assert record["stopped"] == "max seeds" and record["decided"] is False
    assert record["looks"][-1]["verdicts"][MASK]["verdict"] == "inconclusive"


def test_searcher_stops_at_the_first_look_that_decides(tmp_path):
    searcher = make_searcher(tmp_path, max_seeds=10)
    ids: list[str] = []
    noise = {s: 0.001 * (s % 3) for s in range(10)}.get
    while searcher.suggest("probe") != SeedSearcher.FINISHED:
        searcher.queue.insert(0, searcher.trials.pop("probe"))  # put the probe back
        run_seed(searcher, lambda s: 3.0, noise, ids)
    record = json.loads((tmp_path / "study.json").read_text())["sequential"]
    assert record["decided"] is True and record["stopped"] == "decided"
    assert record["looks"][-1]["verdicts"][MASK]["verdict"] == "better"
    assert record["looks"][-1]["seeds"] < 10  # stopped before the cap
    assert len(searcher.seeds) == record["looks"][-1]["seeds"]


def test_searcher_state_survives_save_and_restore(tmp_path):
    searcher = make_searcher(tmp_path)
    ids: list[str] = []
    run_seed(searcher, lambda s: 1.0 if s % 2 else -1.0, lambda s: 0.0, ids)
    running = searcher.suggest("running")  # a seed-3 trial in flight when the driver stops
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    restored = make_searcher(tmp_path)
    restored.restore(str(path))
    assert (
        restored.seeds == [0, 1, 2, 3] and restored.trials["running"] == searcher.trials["running"]
    )
    # the trial Tune restarts reports to the restored searcher, which then proposes the rest
    restored.on_trial_complete("running", {"val/psnr_fg": 20.0})
    assert (restored.trials["running"]) in restored.values
    rest = run_seed(restored, lambda s: 0.0, lambda s: 0.0, ids)
    assert {c[SEED_KEY] for c in rest} == {3} and running[SEED_KEY] == 3


def test_a_trial_without_a_value_scores_the_floor_and_is_counted(tmp_path):
    searcher = make_searcher(tmp_path, first=(0, 1), max_seeds=2)
    for i in range(4):
        searcher.suggest(f"t{i}")
    for i in range(4):
        value = float("nan") if i == 0 else 20.0
        searcher.on_trial_complete(f"t{i}", {"val/psnr_fg": value}, error=i == 0)
    assert searcher.values[searcher.trials["t0"]] == 0.0  # FLOORS["psnr_fg"]
    record = json.loads((tmp_path / "study.json").read_text())["sequential"]
    assert record["floored_trials"] == ["t0"] and record["stopped"] == "max seeds"


def test_make_sequential_searcher_from_a_plan(tmp_path):
    plan = plan_for("mask_loss_ablation", "--smoke", "--until-decided", storage=tmp_path)
    searcher = make_sequential_searcher(plan)
    assert len(searcher.cells) == 4 and searcher.seeds == [0, 1, 2]
    assert set(searcher.design.margins) == {MASK, BG}
    assert searcher.design.looks == tuple(range(3, 11))


def test_report_section_states_the_rule_and_every_look(tmp_path):
    from analysis.sequential import report_section

    searcher = make_searcher(tmp_path, max_seeds=4)
    (tmp_path / "study.json").write_text(
        json.dumps({"sequential": {"rule": "RULE TEXT", "max_seeds": 4, "seeds": [0, 1, 2]}})
    )
    ids: list[str] = []
    for _ in range(2):
        run_seed(searcher, {0: 2.0, 1: -2.0, 2: 1.0, 3: -1.0}.get, lambda s: 0.0, ids)
    record = json.loads((tmp_path / "study.json").read_text())
    text = report_section(record)
    assert "RULE TEXT" in text and "at most 4 seeds" in text
    assert "maximum number of seeds" in text
    assert "| 3 | inconclusive" in text and "| 4 | inconclusive" in text
    assert report_section({"study": "plain grid"}) is None
