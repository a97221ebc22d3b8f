"""The study plan, made without Ray: overrides in order, refusals naming the thing, a refused
start that writes nothing, and --resume keeping the settings a study started with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.plan import (
    LOCAL_CHECKPOINTS_KEPT,
    StudyError,
    check_resume_state,
    make_plan,
    resumed_overrides,
    study_record,
)
from study.run import main, parser
from trainables.gslrm.config import ConfigError


def plan_for(*argv: str, storage: Path):
    return make_plan(parser().parse_args([*argv, "--storage", str(storage)]))


def test_overrides_stack_study_then_smoke_then_set_then_wandb(tmp_path: Path) -> None:
    plan = plan_for(
        "mask_loss_ablation",
        "--smoke",
        "--set",
        "training.schedule.max_steps=20",
        "--set",
        "training.checkpointing.keep_last=5",
        "--wandb",
        "disabled",
        storage=tmp_path,
    )
    assert plan.study_dir == tmp_path.resolve() / "mask_loss_ablation"
    assert plan.overrides["training.losses.ssim_loss_weight"] == 0.5  # the study's fixed value
    assert plan.overrides["validation.val_every"] == 10  # the smoke preset
    assert plan.overrides["training.schedule.max_steps"] == 20  # --set beats the preset's 40
    assert plan.overrides["training.checkpointing.keep_last"] == 5  # --set beats the default 2
    assert plan.overrides["training.logging.wandb.mode"] == "disabled"
    # the config is the base YAML with all of that applied
    assert plan.config.training.schedule.max_steps == 20
    assert plan.config.training.losses.ssim_loss_weight == 0.5
    assert plan.base_config.name == "smoke.yaml"
    assert plan.num_samples == 1 and plan.grid_seeds is None


def test_defaults_without_smoke(tmp_path: Path) -> None:
    plan = plan_for("mouse_loss_sweep", storage=tmp_path)
    assert plan.overrides["training.checkpointing.keep_last"] == LOCAL_CHECKPOINTS_KEPT
    assert plan.num_samples == 32 and plan.base_config.name == "mouse_gslrm.yaml"
    assert plan.gpus_per_trial is None  # decided once Ray shows the cluster
    with pytest.raises(AttributeError):
        plan.resume = True  # type: ignore[misc]  # frozen: nothing changes a plan after it is made


def test_seeds_replace_a_grid_studys_seeds(tmp_path: Path) -> None:
    plan = plan_for("view_order_ablation", "--smoke", "--seeds", "4, 5", storage=tmp_path)
    assert plan.grid_seeds == (4, 5)


def test_bad_seed_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["view_order_ablation", "--seeds", "0,a"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'a'" in err and "--seeds" in err and "<lambda>" not in err


def test_unknown_set_key_is_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training.losses.no_such_key"):
        plan_for("mouse_loss_sweep", "--set", "training.losses.no_such_key=1", storage=tmp_path)


def test_resume_of_nothing_refuses_without_creating_the_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "not_yet"
    assert main(["mouse_loss_sweep", "--smoke", "--resume", "--storage", str(storage)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not storage.exists()


def write_started_study(study_dir: Path, overrides: dict) -> None:
    (study_dir / "tune-0a1b2c3d").mkdir(parents=True)
    (study_dir / "tune-0a1b2c3d" / "experiment_state-2026.json").write_text("{}")
    (study_dir / "study.json").write_text(
        json.dumps(
            {
                "study": "s",
                "objective": "val/psnr_fg",
                "tune_dir": "tune-0a1b2c3d",
                "overrides": overrides,
            }
        )
    )


def test_resume_keeps_the_settings_it_started_with(tmp_path: Path) -> None:
    study_dir = tmp_path / "s"
    write_started_study(study_dir, {"training.schedule.max_steps": 40})
    assert check_resume_state(study_dir, resume=True) == study_dir / "tune-0a1b2c3d"
    with pytest.raises(StudyError, match="already holds this study"):
        check_resume_state(study_dir, resume=False)
    # the same value again is fine; a changed or a new key is refused, naming both values
    assert resumed_overrides(study_dir, ("training.schedule.max_steps=40",)) == {
        "training.schedule.max_steps": 40
    }
    with pytest.raises(StudyError, match=r"max_steps=80.*max_steps=40"):
        resumed_overrides(study_dir, ("training.schedule.max_steps=80",))
    with pytest.raises(StudyError, match=r"optimizer.lr=0.1.*'<default>'"):
        resumed_overrides(study_dir, ("training.optimizer.lr=0.1",))


def test_truncated_study_json_is_one_message_naming_it(tmp_path: Path) -> None:
    study_dir = tmp_path / "s"
    write_started_study(study_dir, {})
    (study_dir / "study.json").write_text('{"study": "s", "overri')
    with pytest.raises(StudyError, match=r"study\.json: unreadable"):
        resumed_overrides(study_dir, ())


def test_study_record_says_what_was_run(tmp_path: Path) -> None:
    plan = plan_for("mouse_loss_sweep", "--smoke", storage=tmp_path)
    record = study_record(plan, {"a": 1}, 0.0, plan.study_dir / "tune-12345678")
    assert record["searched_keys"][0] == "mouse.use_mouse_dataset"
    assert record["max_steps"] == 40 and record["num_samples"] == 4 and record["smoke"] is True
    assert record["optuna_storage"] == "optuna.db" and record["tune_dir"] == "tune-12345678"
    assert record["overrides"] == {"a": 1}


def test_size_cpu_resolves_to_the_registered_preset(tmp_path: Path) -> None:
    plan = plan_for("view_order_ablation", "--size", "cpu", storage=tmp_path)
    assert plan.size == "cpu" and plan.base_config.name == "cpu.yaml"
    assert plan.config.training.schedule.max_steps == 3000
    assert (plan.data.samples, plan.data.size, plan.data.test_samples) == (48, 64, 24)
    sweep = plan_for("mouse_loss_sweep", "--size", "cpu", storage=tmp_path)
    assert sweep.num_samples == 12 and sweep.grace_period_rounds == 4
    record = study_record(sweep, {}, 0.0, sweep.study_dir / "tune-12345678")
    assert record["size"] == "cpu" and record["smoke"] is False
    # --smoke stays an alias of --size smoke
    assert plan_for("view_order_ablation", "--smoke", storage=tmp_path).size == "smoke"
    assert plan_for("view_order_ablation", storage=tmp_path).size == "full"


def test_unknown_size_is_refused_by_name(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["view_order_ablation", "--size", "huge"])
    assert exit_info.value.code == 2
    assert "'huge'" in capsys.readouterr().err
    from study.studies import UnknownSizeError, get_study

    with pytest.raises(UnknownSizeError, match="unknown study size 'huge'; valid sizes: smoke"):
        get_study("view_order_ablation").preset("huge")


@pytest.mark.parametrize("name", ["mouse_pareto_sweep", "view_count_ablation"])
def test_issue13_studies_plan_against_the_trainer_config(tmp_path: Path, name: str) -> None:
    """Both new studies validate their space / grid against the real config, full and smoke."""
    for smoke in ((), ("--smoke",)):
        plan = plan_for(name, *smoke, storage=tmp_path)
        if name == "view_count_ablation":
            # the remaining views are the targets: 6 views, none of the inputs scored
            assert plan.config.training.dataset.num_views == 6
            assert plan.config.training.dataset.target_has_input is False
            assert plan.spec.grid["training.dataset.num_input_views"] == [1, 2, 3, 4, 5]
            assert plan.grid_seeds == ((0,) if smoke else None)
        else:
            assert plan.spec.objectives == ("val/psnr_bal", "val/mask_iou")
            assert plan.spec.scheduler == "fifo"  # two objectives: no single-metric ASHA
            assert (
                "training.losses.alpha_loss_weight"
                in study_record(plan, {}, 0.0, tmp_path / "tune-x")["searched_keys"]
            )


def test_objectives_must_start_with_the_tune_metric() -> None:
    from study.studies import StudySpec

    with pytest.raises(ValueError, match="must start with its objective 'val/psnr_bal'"):
        StudySpec(
            name="x",
            description="x",
            search="optuna",
            space="mouse_pareto",
            objectives=("val/mask_iou", "val/psnr_bal"),
        )


def test_sampler_seed_reaches_the_plan_and_the_record(tmp_path: Path) -> None:
    plan = plan_for("mouse_loss_sweep", "--smoke", "--sampler-seed", "7", storage=tmp_path)
    assert plan.sampler_seed == 7
    assert study_record(plan, {}, 0.0, plan.study_dir / "tune-x")["sampler_seed"] == 7
    assert plan_for("mouse_loss_sweep", "--smoke", storage=tmp_path).sampler_seed == 0


def start_study_with(storage: Path, *argv: str) -> dict:
    """Write the study.json a study started with `argv` would write; returns it."""
    plan = plan_for("view_order_ablation", *argv, storage=storage)
    record = study_record(plan, dict(plan.overrides), 2.0, plan.study_dir / "tune-0a1b2c3d")
    record["plan"]["concurrency"] = 3
    plan.study_dir.mkdir(parents=True)
    (plan.study_dir / "study.json").write_text(json.dumps(record))
    return record


# A DDP study on a cluster: 2 workers and 2 GPUs per trial, at most 3 trials at once
DDP_FLAGS = (
    "--smoke",
    "--workers-per-trial",
    "2",
    "--gpus-per-trial",
    "2",
    "--max-concurrent",
    "3",
)


def test_resume_reloads_the_whole_plan_from_study_json(tmp_path: Path) -> None:
    """Defect 1 of issue 23: --resume took workers, GPUs, concurrency and address from the new
    command line, so a resumed DDP study on a cluster restarted locally with one worker."""
    start_study_with(
        tmp_path,
        *DDP_FLAGS,
        "--address",
        "10.0.0.5:6379",
        "--max-failures",
        "4",
        "--seeds",
        "0,1",
        "--set",
        "training.optimizer.lr=0.001",
    )
    resumed = plan_for("view_order_ablation", "--resume", storage=tmp_path)
    assert resumed.size == "smoke" and resumed.workers_per_trial == 2
    assert resumed.gpus_per_trial == 2.0 and resumed.max_concurrent == 3
    assert resumed.address == "10.0.0.5:6379" and resumed.max_failures == 4
    assert resumed.seeds == (0, 1) and resumed.grid_seeds == (0, 1)
    assert resumed.config.training.optimizer.lr == 0.001
    # the same values again are fine
    again = plan_for(
        "view_order_ablation", "--resume", "--smoke", "--workers-per-trial", "2", storage=tmp_path
    )
    assert again.workers_per_trial == 2


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--workers-per-trial", "1"], r"--workers-per-trial 1: .*--workers-per-trial 2"),
        (["--size", "cpu"], r"--size cpu: .*--size smoke"),
        (["--max-concurrent", "1"], r"--max-concurrent 1: .*--max-concurrent 3"),
        (["--gpus-per-trial", "1"], r"--gpus-per-trial 1.0: .*--gpus-per-trial 2.0"),
    ],
)
def test_resume_refuses_a_flag_that_contradicts_the_plan(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    start_study_with(tmp_path, *DDP_FLAGS)
    with pytest.raises(StudyError, match=named):
        plan_for("view_order_ablation", "--resume", *flags, storage=tmp_path)


def test_resume_may_move_the_address_and_says_so(tmp_path: Path, capsys) -> None:
    start_study_with(tmp_path, "--smoke", "--address", "10.0.0.5:6379")
    moved = plan_for(
        "view_order_ablation", "--resume", "--address", "10.0.0.9:6379", storage=tmp_path
    )
    assert moved.address == "10.0.0.9:6379"
    assert "the study ran on 10.0.0.5:6379" in capsys.readouterr().err


def test_resume_line_names_only_the_study_and_its_folder(tmp_path: Path) -> None:
    from study.run import resume_command

    plan = plan_for("view_order_ablation", "--smoke", "--workers-per-trial", "2", storage=tmp_path)
    assert resume_command(plan) == (
        f"python -m study.run view_order_ablation --resume --storage {tmp_path.resolve()}"
    )
