"""Per-item evaluation of a run folder: checkpoint rule, item set, typed rows, protocol record.

Run folders are built by hand (config.yaml, metrics.jsonl, checkpoints of a seeded tiny
model), so each test controls which step is best and which checkpoints were kept.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from analysis import evaluate as cli
from trainables.gslrm import evaluate as ev
from trainables.gslrm.checkpoint import checkpoint_name, save_checkpoint
from trainables.gslrm.config import ConfigError, load_config, save_config
from trainables.gslrm.data.synthetic import generate_dataset
from trainables.gslrm.metrics import ITEM_METRICS, item_view_metrics
from trainables.gslrm.model import GSLRM
from trainables.gslrm.protocol import PROTOCOL_COMPARED_KEYS

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return generate_dataset(
        tmp_path_factory.mktemp("data"), samples=4, size=32, seed=7, test_samples=3
    )


def tiny_config(data: dict, *overrides: str):
    return load_config(
        REPO / "configs/smoke.yaml",
        [
            f"training.dataset.dataset_path={data['train_list']}",
            f"validation.dataset_path={data['val_list']}",
            "model.image_tokenizer.image_size=32",
            "model.transformer.n_layer=1",
            "model.transformer.d=64",
            "evaluation.batch_size=2",
            *overrides,
        ],
    )


def make_run(root: Path, config, history: dict[int, float], kept: list[int]) -> Path:
    """A run folder: config.yaml, metrics.jsonl with val/psnr_fg = val/psnr_bal per step,
    checkpoints `kept`
    (weights differ per step, so a wrong choice changes the scores)."""
    root.mkdir(parents=True)
    save_config(config, root / "config.yaml")
    lines = [
        json.dumps({"step": s, "val/psnr_fg": v, "val/psnr_bal": v, "val/psnr": v + 10})
        for s, v in history.items()
    ]
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for step in kept:
        torch.manual_seed(step)
        model = GSLRM(config.model)
        opt = torch.optim.AdamW(model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        save_checkpoint(root / "checkpoints" / checkpoint_name(step), model, opt, sched, step)
    return root


def test_evaluation_writes_one_typed_row_per_item_and_view(tmp_path, data) -> None:
    config = tiny_config(data)
    run = make_run(tmp_path / "run", config, {2: 10.0, 4: 12.0}, kept=[2, 4])
    result = ev.evaluate_run(run, config)
    table = pq.read_table(run / "eval" / "items.parquet")
    assert table.schema.equals(ev.ITEMS_SCHEMA)
    rows = table.to_pydict()
    assert result.rows == table.num_rows == 3 * 6  # 3 test items x 6 cameras
    assert sorted(set(rows["item_id"])) == ["test_000000", "test_000001", "test_000002"]
    assert rows["camera"][:6] == [0, 1, 2, 3, 4, 5]
    assert rows["role"][:6] == ["input"] * 5 + ["novel"]  # smoke: 5 input views
    protocol = json.loads((run / "eval" / "protocol.json").read_text())
    assert protocol == result.protocol
    assert protocol["split"] == "test" and protocol["dataset_path"].endswith("data_test.txt")
    assert protocol["checkpoint_rule"] == "best" and protocol["checkpoint_step"] == 4
    assert protocol["checkpoint_objective"] == "val/psnr_bal"
    assert protocol["metrics_version"] >= 1 and protocol["image_size"] == 32
    assert protocol["pred_mask_threshold"] == 0.1 and protocol["gt_alpha_threshold"] == 0.5
    keys = zip(rows["item_id"], rows["camera"], strict=True)
    assert protocol["item_set_hash"] == ev.item_set_hash(keys)
    assert set(PROTOCOL_COMPARED_KEYS) <= set(protocol)
    assert not list((run / "eval").glob("*.tmp"))


def test_rows_match_a_direct_render_and_do_not_depend_on_batch_size(tmp_path, data) -> None:
    config = tiny_config(data, "evaluation.checkpoint=last")
    run = make_run(tmp_path / "run", config, {2: 1.0}, kept=[2])
    first = pq.read_table(ev.evaluate_run(run, config).items_path).to_pandas()
    one = tiny_config(data, "evaluation.checkpoint=last", "evaluation.batch_size=1")
    second = pq.read_table(ev.evaluate_run(run, one, out_dir=tmp_path / "b1").items_path)
    second = second.to_pandas()
    for name in ITEM_METRICS:
        assert first[name].to_numpy() == pytest.approx(
            second[name].to_numpy(), abs=1e-4, nan_ok=True
        )
    # item 1 rendered here by hand gives the same numbers as its rows
    model = GSLRM(config.model)
    ev.load_weights(model, run / "checkpoints" / checkpoint_name(2))
    dataset = ev.MultiViewDataset(data["test_list"], ev.evaluation_config(config))
    batch = {k: v[None] for k, v in dataset[1].items()}
    with torch.no_grad():
        rgb = ev.render_targets(model.eval(), batch, config, torch.autocast("cpu", enabled=False))
    direct = item_view_metrics(
        rgb, batch["target_images"], batch["target_alpha"], batch["background"]
    )
    rows = first[first["item_id"] == "test_000001"]
    assert rows["psnr_fg"].to_numpy() == pytest.approx(direct["psnr_fg"][0].numpy(), abs=1e-4)
    assert rows["mask_iou"].to_numpy() == pytest.approx(
        direct["mask_iou"][0].numpy(), abs=1e-6, nan_ok=True
    )


def test_best_rule_uses_the_objective_and_says_when_the_best_was_pruned(tmp_path, data) -> None:
    run = make_run(tmp_path / "run", tiny_config(data), {2: 11.0, 4: 15.0, 6: 13.0}, kept=[2, 6])
    best = ev.choose_checkpoint(run, "best", "val/psnr_fg", "max")
    assert (best.step, best.objective_value, best.best_validated_step) == (6, 13.0, 4)
    assert ev.choose_checkpoint(run, "best", "val/psnr_fg", "min").step == 2
    assert ev.choose_checkpoint(run, "last").step == 6
    # a truncated newest file is skipped, not evaluated
    (run / "checkpoints" / checkpoint_name(6)).write_bytes(b"not a checkpoint")
    assert ev.choose_checkpoint(run, "last").step == 2
    with pytest.raises(ev.EvaluationError, match="no kept checkpoint has a val/ssim value"):
        ev.choose_checkpoint(run, "best", "val/ssim", "max")
    with pytest.raises(ev.EvaluationError, match="no readable checkpoint"):
        ev.choose_checkpoint(tmp_path, "last")


def test_without_a_test_split_the_validation_list_is_used_and_recorded(tmp_path, capsys) -> None:
    plain = generate_dataset(tmp_path / "plain", samples=3, size=32, seed=1)
    config = tiny_config(plain)
    run = make_run(tmp_path / "run", config, {2: 1.0}, kept=[2])
    result = ev.evaluate_run(run, config)
    assert result.protocol["split"] == "validation"
    assert result.protocol["dataset_path"] == plain["val_list"]
    assert "no test split" in capsys.readouterr().out
    assert result.rows == 1 * 6  # val_count(3, 0.2) = 1 sample


def test_random_view_runs_are_scored_on_the_same_rig_ordered_views(tmp_path, data) -> None:
    rig = tiny_config(data, "evaluation.checkpoint=last")
    shuffled = tiny_config(
        data,
        "evaluation.checkpoint=last",
        "mouse.use_mouse_dataset=false",
        "training.dataset.target_has_input=false",
    )
    a = ev.evaluate_run(make_run(tmp_path / "a", rig, {2: 1.0}, [2]), rig)
    b = ev.evaluate_run(make_run(tmp_path / "b", shuffled, {2: 1.0}, [2]), shuffled)
    assert a.protocol["item_set_hash"] == b.protocol["item_set_hash"]
    # same weights (same seed) and the same views: the same numbers
    ta, tb = pq.read_table(a.items_path).to_pandas(), pq.read_table(b.items_path).to_pandas()
    assert ta["psnr"].to_numpy() == pytest.approx(tb["psnr"].to_numpy())


def test_evaluation_config_errors_name_the_key(data) -> None:
    with pytest.raises(ConfigError, match=r"^evaluation.checkpoint: must be best"):
        tiny_config(data, "evaluation.checkpoint=newest")
    with pytest.raises(ConfigError, match=r"^evaluation.objective: must be a validation metric"):
        tiny_config(data, "evaluation.objective=train/loss")
    with pytest.raises(ConfigError, match=r"^evaluation.batch_size: must be >= 1"):
        tiny_config(data, "evaluation.batch_size=0")
    with pytest.raises(ConfigError, match=r"^evaluation.pred_mask_threshold: must be in \(0, 1\)"):
        tiny_config(data, "evaluation.pred_mask_threshold=1.5")


def test_duplicate_item_ids_are_refused(tmp_path, data) -> None:
    config = tiny_config(data, "evaluation.checkpoint=last")
    run = make_run(tmp_path / "run", config, {2: 1.0}, [2])
    first = Path(data["test_list"]).parent / "test_samples" / "000000"
    listing = tmp_path / "twice.txt"
    listing.write_text(f"{first}\n{first}\n")
    with pytest.raises(ev.EvaluationError, match="share the id 'test_000000'"):
        ev.evaluate_run(run, config, dataset_path=listing)


def test_cli_evaluates_a_checkpoint_and_reports_errors(tmp_path, data, capsys) -> None:
    config = tiny_config(data)
    run = make_run(tmp_path / "run", config, {2: 3.0, 4: 1.0}, kept=[2, 4])
    ckpt = run / "checkpoints" / checkpoint_name(4)
    assert cli.main([str(run), "--checkpoint", str(ckpt), "--set", "evaluation.batch_size=3"]) == 0
    out = capsys.readouterr().out
    assert "3 items x views = 18 rows" in out and "novel views (3 rows)" in out
    protocol = json.loads((run / "eval" / "protocol.json").read_text())
    assert (protocol["checkpoint_rule"], protocol["checkpoint_step"]) == ("file", 4)
    assert cli.main([str(run), "--rule", "last", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "protocol.json").read_text())["checkpoint_step"] == 4
    assert cli.main([str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert cli.main([str(run), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_analysis_evaluate_does_not_import_torch() -> None:
    code = "import sys, analysis.evaluate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_metric_nan_survives_the_parquet_round_trip(tmp_path) -> None:
    columns = {
        "item_id": ["a"],
        "block": ["a"],
        "item_index": [0],
        "camera": [3],
        "role": ["novel"],
        **{name: [math.nan if name == "psnr_int" else 1.0] for name in ITEM_METRICS},
    }
    table = ev.items_table({k: np.asarray(v) for k, v in columns.items()})
    ev.write_evaluation(tmp_path, table, {"metrics_version": 1})
    back = pq.read_table(tmp_path / "items.parquet").to_pandas()
    assert math.isnan(back.loc[0, "psnr_int"]) and back.loc[0, "camera"] == 3
    assert str(back["camera"].dtype) == "int16"


def test_end_of_trial_call_on_a_real_training_run(tmp_path, data) -> None:
    """evaluate_trial reads what the real training loop writes (metrics.jsonl, checkpoints)."""
    from trainables.gslrm.train import train

    config = tiny_config(
        data,
        "training.schedule.max_steps=4",
        "training.schedule.warmup=1",
        "validation.val_every=2",
        "validation.max_items=1",
        "training.checkpointing.checkpoint_every=2",
        "training.logging.wandb.mode=disabled",
    )
    train(config, tmp_path / "run")
    result = ev.evaluate_trial(tmp_path / "run", config, "val/psnr_fg", "max")
    history = ev.validation_history(tmp_path / "run" / "metrics.jsonl", "val/psnr_fg")
    assert set(history) == {2, 4}
    assert result.protocol["checkpoint_step"] == max(history, key=lambda s: (history[s], -s))
    assert result.protocol["checkpoint_objective_value"] == pytest.approx(
        history[result.protocol["checkpoint_step"]]
    )
    table = pq.read_table(tmp_path / "run" / "eval" / "items.parquet")
    assert table.schema.equals(ev.ITEMS_SCHEMA) and table.num_rows == 3 * 6


def test_analysis_compares_the_fields_the_evaluator_records() -> None:
    from analysis import paired

    assert paired.PROTOCOL_COMPARED_KEYS == PROTOCOL_COMPARED_KEYS
    assert set(paired.ITEM_FILE_COLUMNS) | set(paired.OPTIONAL_ITEM_COLUMNS) == set(ev.ITEM_COLUMNS)
    assert set(paired.COMPARED_METRICS) <= set(ITEM_METRICS)


def test_the_default_best_rule_does_not_pick_the_blob(tmp_path, data) -> None:
    """Issue 22 item 13, a cpu-size view-order run's curve (steps 500, 1000, 1500 as 2, 4, 6;
    psnr_bal from its logged PSNRs): psnr_union is best at the blobby step 2 (mask IoU 0.49),
    psnr_fg at step 4, the balanced PSNR (the default) at step 6 (IoU 0.60)."""
    config = tiny_config(data)
    run = make_run(tmp_path / "run", config, {}, kept=[2, 4, 6])
    lines = [
        {"step": 2, "val/psnr_fg": 15.35, "val/psnr_union": 13.23, "val/psnr_bal": 17.88},
        {"step": 4, "val/psnr_fg": 15.83, "val/psnr_union": 12.54, "val/psnr_bal": 18.25},
        {"step": 6, "val/psnr_fg": 15.72, "val/psnr_union": 12.97, "val/psnr_bal": 18.35},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    chosen = ev.choose_checkpoint(run, "best")
    assert (chosen.step, chosen.objective_value) == (6, 18.35)
    assert ev.choose_checkpoint(run, "best", "val/psnr_union").step == 2  # metrics v2's default
    assert ev.choose_checkpoint(run, "best", "val/psnr_fg").step == 4  # v1's
    assert config.evaluation.objective == "val/psnr_bal"


def test_items_carry_the_block_of_the_list_sidecar(tmp_path, data) -> None:
    """Issue 22 item 7: consecutive test frames in blocks of 2 -> blocks 0, 0, 1."""
    from trainables.gslrm.data.reader import block_file

    config = tiny_config(data, "evaluation.checkpoint=last")
    run = make_run(tmp_path / "run", config, {2: 1.0}, kept=[2])
    plain = ev.evaluate_run(run, config, out_dir=tmp_path / "plain")
    rows = pq.read_table(plain.items_path).to_pandas()
    assert (rows["block"] == rows["item_id"]).all() and plain.protocol["blocks"] is None
    listed = tmp_path / "list" / "data_test.txt"
    listed.parent.mkdir()
    folders = [line for line in Path(data["test_list"]).read_text().splitlines() if line]
    base = Path(data["test_list"]).parent
    listed.write_text("".join(f"{(base / f).resolve()}\n" for f in folders))
    block_file(listed).write_text("@consecutive\t2\n")
    blocked = ev.evaluate_run(run, config, dataset_path=listed, out_dir=tmp_path / "blocked")
    rows = pq.read_table(blocked.items_path).to_pandas()
    assert rows.groupby("item_id")["block"].first().tolist() == ["0", "0", "1"]
    assert blocked.protocol["blocks"] == "data_test.blocks.tsv"
    assert blocked.protocol["n_blocks"] == 2
