"""Per-item evaluation of one trained run: every item x every target view, one row each.

    evaluate_run(run_dir, config) -> EvalResult      (also: python -m analysis.evaluate RUN_DIR)

writes `<run>/eval/items.parquet` (one typed row per (item, view), columns ITEM_COLUMNS),
`<run>/eval/picture.png` (the validation picture's five labelled rows for the first item, every
camera a column, drawn with the evaluated checkpoint and the evaluation's mask threshold) and
then `<run>/eval/protocol.json` (what makes two evaluations comparable; it names the picture),
each atomically; the protocol file is written last, so its presence marks a complete
evaluation, and the run's journal (`trainables.journal`) gets an `evaluated` event naming the
checkpoint and the picture.

The protocol (issue 12; the FaceLift fork's audit lists what it must prevent):
- Items: the test split `evaluation.dataset_path`, else `data_test.txt` beside the training
  list, else the validation list (said on stdout and recorded as `split: validation`).
- Views: always the rig order, whatever dataset type the run trained with, so every trial is
  scored on the same (item, camera) pairs: inputs are cameras 0..num_input_views-1 (role
  `input`), targets are every one of the num_views cameras (the others have role `novel`).
  Validation uses the rig order too (`data.dataset.rig_order_config`), so the `best`
  checkpoint is chosen on the task the test scores (issue 22, item 8).
- Comparable across input-view counts: the item set (`item_set_hash`, over (item, camera))
  and `view_order` do not depend on num_input_views; which cameras were inputs is recorded
  apart (`input_cameras`, informational) and is in the rows' `role`. The analysis compares
  trials with different inputs only on the cameras that are a target in every one of them
  (analysis.paired.shared_targets) and reports each one's own inputs apart.
- Checkpoint: `evaluation.checkpoint` = `last` (newest readable checkpoint) or `best` (the
  kept checkpoint whose step has the best `evaluation.objective` in the run's journal, else in
  metrics.jsonl for a run without one). When the best validated step's checkpoint was
  pruned, the best kept one is used and the record says so.
- Metrics: `metrics.item_view_metrics` (definitions and NaN cases there), METRICS_VERSION.
- Blocks: items.parquet's `block` column says which items are correlated (one video or
  session, consecutive frames), from the list's block sidecar (trainables/gslrm/data/reader.py,
  BLOCKS_SUFFIX), else each item is its own block; the record names the sidecar
  (`blocks`, informational) and counts them (`n_blocks`).
- Record: `protocol.json` holds PROTOCOL_COMPARED_KEYS (two evaluations are comparable only
  where all of them agree; analysis.paired refuses the rest) plus the step, paths, timings and
  code version (informational: a code change that alters a metric bumps METRICS_VERSION).

Rendering is batched (`evaluation.batch_size` items) under torch.no_grad(), with the
trainer's autocast on CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trainables.gslrm.checkpoint import CheckpointError, load_weights, read_checkpoint
from trainables.gslrm.config import ConfigError, TrainerConfig, load_config
from trainables.gslrm.data.dataset import (
    MultiViewDataset,
    rig_order_config,
    validation_list_file,
)
from trainables.gslrm.data.reader import DataError, block_file
from trainables.gslrm.metrics import ITEM_METRICS, METRICS_VERSION, item_view_metrics
from trainables.gslrm.model import GSLRM
from trainables.gslrm.render import render
from trainables.gslrm.types import Cameras
from trainables.gslrm.version import code_version
from trainables.gslrm.visualize import validation_picture
from trainables.journal import TrialJournal, append_event, read_json_lines
from trainables.pictures import EVAL_DIR, EVAL_PICTURE, PROTOCOL_FILE

ITEMS_FILE = "items.parquet"
TEST_LIST = "data_test.txt"
ROLES = ("input", "novel")
_CKPT_NAME = re.compile(r"ckpt_(\d+)\.pt")

# items.parquet schema: identifiers first, then ITEM_METRICS (all float64, NaN = undefined).
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        # correlated items share a block (a video / session, consecutive frames): the list's
        # block sidecar, else the item id (reader.BLOCKS_SUFFIX)
        pa.field("block", pa.string(), nullable=False),
        pa.field("item_index", pa.int32(), nullable=False),
        pa.field("camera", pa.int16(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        *[pa.field(name, pa.float64(), nullable=False) for name in ITEM_METRICS],
    ]
)
ITEM_COLUMNS = tuple(ITEMS_SCHEMA.names)


class EvaluationError(RuntimeError):
    """A run, checkpoint or item list that cannot be evaluated; the message says which."""


@dataclass(frozen=True)
class ChosenCheckpoint:
    path: Path
    step: int
    rule: str  # best | last
    objective_value: float | None = None  # the validation objective at `step` (best only)
    best_validated_step: int | None = None  # best step in metrics.jsonl, kept or not


@dataclass(frozen=True)
class EvalResult:
    items_path: Path
    protocol_path: Path
    protocol: dict[str, Any]
    rows: int
    seconds: float


# ---------------------------------------------------------------------------------------
# which checkpoint, which items


def checkpoint_steps(folder: Path) -> dict[int, Path]:
    """{step: path} of the ckpt_<step>.pt files in folder (readability not checked)."""
    found = {}
    for path in Path(folder).glob("ckpt_*.pt"):
        match = _CKPT_NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def validation_history(metrics_file: Path, objective: str) -> dict[int, float]:
    """{step: finite objective value} from a trainer's metrics.jsonl (later lines win).

    Read through the journal's tolerant reader: a line torn by a killed writer is skipped, so
    a resumed run whose log holds one is still evaluated (it used to raise at every round).
    """
    history: dict[int, float] = {}
    for record in read_json_lines(metrics_file):
        value, step = record.get(objective), record.get("step")
        if isinstance(value, int | float) and math.isfinite(value) and isinstance(step, int):
            history[step] = float(value)
    return history


def run_validation_history(run_dir: Path, objective: str) -> dict[int, float]:
    """{step: finite objective value} of a run: its journal's validation rounds (the record
    the trainer's pruning spared the best of), else metrics.jsonl (a FaceLift run, or one
    written before the journal)."""
    curve = TrialJournal.read(run_dir).curve
    if not curve:
        return validation_history(Path(run_dir) / "metrics.jsonl", objective)
    values = {step: metrics.get(objective, math.nan) for step, metrics in curve.items()}
    return {step: value for step, value in values.items() if math.isfinite(value)}


def choose_checkpoint(
    run_dir: Path, rule: str, objective: str = "val/psnr_bal", mode: str = "max"
) -> ChosenCheckpoint:
    """The run's checkpoint under `rule` (see the module docstring); unreadable files are skipped."""
    run_dir = Path(run_dir)
    readable = {}
    for step, path in sorted(checkpoint_steps(run_dir / "checkpoints").items()):
        try:
            read_checkpoint(path)
        except CheckpointError:
            continue
        readable[step] = path
    if not readable:
        raise EvaluationError(
            f"{run_dir / 'checkpoints'}: no readable checkpoint (ckpt_*.pt) to evaluate; "
            "pass one with --checkpoint PATH"
        )
    if rule == "last":
        step = max(readable)
        return ChosenCheckpoint(readable[step], step, "last")
    if rule != "best":
        raise EvaluationError(f"checkpoint rule {rule!r}: must be best or last")
    history = run_validation_history(run_dir, objective)
    sign = 1.0 if mode == "max" else -1.0
    scored = {step: value for step, value in history.items() if step in readable}
    if not scored:
        raise EvaluationError(
            f"{run_dir}: no kept checkpoint has a {objective} value in its journal or "
            "metrics.jsonl, so the `best` rule cannot choose; use evaluation.checkpoint=last"
        )
    # ties go to the earliest step, so the choice does not depend on file order
    best_kept = min(scored, key=lambda s: (-sign * scored[s], s))
    best_any = min(history, key=lambda s: (-sign * history[s], s))
    return ChosenCheckpoint(readable[best_kept], best_kept, "best", scored[best_kept], best_any)


def evaluation_list_file(config: TrainerConfig) -> tuple[Path, str]:
    """(item list, split name): evaluation.dataset_path ("test"), else data_test.txt beside
    the training list ("test"), else the validation list ("validation")."""
    if config.evaluation.dataset_path:
        return Path(config.evaluation.dataset_path), "test"
    train = config.training.dataset.dataset_path
    if train:
        beside = Path(train).parent / TEST_LIST
        if beside.is_file():
            return beside, "test"
    return validation_list_file(config), "validation"


def evaluation_config(config: TrainerConfig) -> TrainerConfig:
    """The run's config with the protocol's fixed view selection: rig order (the one
    validation uses too), every camera a target."""
    config = rig_order_config(config)
    dataset = dataclasses.replace(config.training.dataset, target_has_input=True)
    training = dataclasses.replace(config.training, dataset=dataset)
    return dataclasses.replace(config, training=training)


def item_set_hash(keys: Iterable[tuple[str, int]]) -> str:
    """sha256 over the sorted (item_id, camera) pairs: equal iff the scored sets are equal.

    The role (input / novel) is left out on purpose: it depends on num_input_views, and two
    view counts scored on the same items and cameras must be comparable on the cameras that
    are a target in both (the rows keep the role for that)."""
    text = "".join(f"{item}\t{camera}\n" for item, camera in sorted(set(keys)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------
# rendering and scoring


def render_targets(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    config: TrainerConfig,
    autocast: contextlib.AbstractContextManager,
) -> torch.Tensor:
    """Inputs -> Gaussians -> target-view renders [B, Vt, 3, H, W] (float32)."""
    with autocast:
        gaussians = model(
            batch["input_images"], Cameras(batch["input_c2w"], batch["input_intrinsics"])
        )
    h, w = batch["target_images"].shape[-2:]
    rgb, _ = render(
        gaussians,
        Cameras(batch["target_c2w"], batch["target_intrinsics"]),
        h,
        w,
        batch["background"],
        backend=config.model.renderer.backend,
        near_plane=config.model.renderer.near_plane,
    )
    return rgb.float()


@torch.no_grad()
def score_items(
    model: torch.nn.Module,
    dataset: MultiViewDataset,
    config: TrainerConfig,
    device: torch.device,
    on_first_batch: Callable[[dict[str, torch.Tensor], torch.Tensor], None] | None = None,
) -> dict[str, np.ndarray]:
    """Render and score every item of `dataset`: one entry per (item, target view).

    Returns columns {ITEM_COLUMNS: [rows]}, items in list order, views in rig order.
    on_first_batch(batch, renders) sees the first batch and its renders [B, Vt, 3, H, W]
    (the picture is drawn from them, so the item is not rendered a second time).
    """
    ev = config.evaluation
    use_amp = device.type == "cuda" and config.training.runtime.use_amp
    dtype = torch.bfloat16 if config.training.runtime.amp_dtype == "bf16" else torch.float16
    loader = DataLoader(dataset, batch_size=ev.batch_size, shuffle=False, num_workers=0)
    n_inputs = config.training.dataset.num_input_views
    columns: dict[str, list] = {name: [] for name in ITEM_COLUMNS}
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            autocast = torch.autocast("cuda", dtype=dtype) if use_amp else contextlib.nullcontext()
            rgb = render_targets(model, batch, config, autocast)
            if on_first_batch is not None and not columns["item_id"]:
                on_first_batch(batch, rgb)
            values = item_view_metrics(
                rgb,
                batch["target_images"],
                batch["target_alpha"],
                batch["background"],
                ev.pred_mask_threshold,
                ev.gt_alpha_threshold,
            )
            cameras = batch["target_view_ids"].cpu().numpy()
            for b, index in enumerate(batch["sample_index"].cpu().tolist()):
                item_id, block = dataset.sample(index).sample_id, dataset.block(index)
                for v, camera in enumerate(cameras[b].tolist()):
                    columns["item_id"].append(item_id)
                    columns["block"].append(block)
                    columns["item_index"].append(index)
                    columns["camera"].append(camera)
                    columns["role"].append("input" if camera < n_inputs else "novel")
                    for name in ITEM_METRICS:
                        columns[name].append(float(values[name][b, v]))
    finally:
        model.train(was_training)
    return {name: np.asarray(values) for name, values in columns.items()}


def items_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """The typed items.parquet table (ITEMS_SCHEMA) from score_items' columns."""
    arrays = [pa.array(columns[f.name], type=f.type) for f in ITEMS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=ITEMS_SCHEMA)


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Write through a temp file in the same folder, then rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def first_item_picture(
    batch: dict[str, torch.Tensor], renders: torch.Tensor, mask_threshold: float
) -> np.ndarray:
    """The labelled five-row picture (trainables.gslrm.visualize) of a batch's first item:
    uint8 [H', W', 3]. Its predicted-mask row uses the evaluation's threshold, the one
    items.parquet's mask metrics use."""
    return validation_picture(
        batch["target_images"][0],
        renders[0].float(),
        batch["target_alpha"][0],
        background=batch["background"][0],
        mask_threshold=mask_threshold,
    )


def write_evaluation(
    out_dir: Path,
    table: pa.Table,
    protocol: dict[str, Any],
    picture: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """items.parquet and picture.png (when given), then protocol.json (the completion marker
    that names the picture), all atomically."""
    items_path, protocol_path = out_dir / ITEMS_FILE, out_dir / PROTOCOL_FILE
    protocol_path.unlink(missing_ok=True)  # an old record must not vouch for new items
    _atomic_write_bytes(items_path, lambda tmp: pq.write_table(table, tmp))
    if picture is not None:
        image = Image.fromarray(picture)
        _atomic_write_bytes(out_dir / EVAL_PICTURE, lambda tmp: image.save(tmp, format="PNG"))
        protocol = {**protocol, "picture": EVAL_PICTURE}
    text = json.dumps(protocol, indent=1, sort_keys=True) + "\n"
    _atomic_write_bytes(protocol_path, lambda tmp: Path(tmp).write_text(text))
    return items_path, protocol_path


def _unique_ids(dataset: MultiViewDataset, list_file: Path) -> None:
    seen: dict[str, Path] = {}
    for index in range(len(dataset)):
        sample = dataset.sample(index)
        if sample.sample_id in seen:
            raise EvaluationError(
                f"{list_file}: samples {seen[sample.sample_id]} and {sample.folder} share the id "
                f"{sample.sample_id!r} (opencv_cameras.json); item ids must be unique"
            )
        seen[sample.sample_id] = sample.folder


def evaluate_run(
    run_dir: str | Path,
    config: TrainerConfig | None = None,
    *,
    dataset_path: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: torch.device | str | None = None,
    out_dir: str | Path | None = None,
) -> EvalResult:
    """Evaluate a run folder's chosen checkpoint on every item x view; write eval/ files.

    run_dir: the trainer's run folder (config.yaml, metrics.jsonl, checkpoints/).
    config: the run's config (default: run_dir/config.yaml); its `evaluation` section sets
        the rule, items, batch size and thresholds. dataset_path / checkpoint override the
        item list and the rule (an explicit checkpoint is recorded as rule "file").
    out_dir: where items.parquet and protocol.json go (default run_dir/eval).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if config is None:
        if not (run_dir / "config.yaml").is_file():
            raise EvaluationError(
                f"{run_dir}: no config.yaml; pass the run folder of a trainer run (or --config)"
            )
        config = load_config(run_dir / "config.yaml")
    ev = config.evaluation
    if checkpoint is not None:
        path = Path(checkpoint)
        chosen = ChosenCheckpoint(path, -1, "file")
    else:
        chosen = choose_checkpoint(run_dir, ev.checkpoint, ev.objective, ev.objective_mode)
        if chosen.best_validated_step not in (None, chosen.step):
            print(
                f"[evaluate] {run_dir.name}: the best {ev.objective} was at step "
                f"{chosen.best_validated_step}, whose checkpoint was not kept; evaluating the "
                f"best kept one (step {chosen.step})",
                flush=True,
            )
    if dataset_path is not None:
        list_file, split = Path(dataset_path), "test"
    else:
        list_file, split = evaluation_list_file(config)
        if split == "validation":
            print(
                f"[evaluate] no test split (evaluation.dataset_path, or {TEST_LIST} beside the "
                f"training list): evaluating on the validation list {list_file}",
                flush=True,
            )
    eval_config = evaluation_config(config)
    try:
        dataset = MultiViewDataset(list_file, eval_config)
    except DataError as exc:
        raise EvaluationError(f"evaluation items: {exc}") from None
    if len(dataset) == 0:
        raise EvaluationError(f"{list_file}: lists no sample to evaluate")
    _unique_ids(dataset, list_file)

    device = torch.device(device) if device is not None else None
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = GSLRM(config.model).to(device)
    try:
        report, _ = load_weights(model, chosen.path)
    except CheckpointError as exc:
        raise EvaluationError(str(exc)) from None
    if chosen.rule == "file":
        chosen = dataclasses.replace(chosen, step=report.step)

    pictures: list[np.ndarray] = []

    def keep_picture(batch: dict[str, torch.Tensor], renders: torch.Tensor) -> None:
        pictures.append(first_item_picture(batch, renders, ev.pred_mask_threshold))

    render_start = time.perf_counter()
    columns = score_items(model, dataset, eval_config, device, on_first_batch=keep_picture)
    render_s = time.perf_counter() - render_start
    table = items_table(columns)
    keys = zip(columns["item_id"], columns["camera"].tolist(), strict=True)
    ds = config.training.dataset
    protocol = {
        "metrics_version": METRICS_VERSION,
        "item_set_hash": item_set_hash(keys),
        "checkpoint_rule": chosen.rule,
        "checkpoint_objective": ev.objective if chosen.rule == "best" else None,
        "pred_mask_threshold": ev.pred_mask_threshold,
        "gt_alpha_threshold": ev.gt_alpha_threshold,
        "image_size": config.model.image_tokenizer.image_size,
        "background_color": ds.background_color,
        "view_order": f"rig: targets cameras 0-{ds.num_views - 1}",
        "input_cameras": list(range(ds.num_input_views)),
        "checkpoint_step": chosen.step,
        "checkpoint_path": str(chosen.path),
        "checkpoint_objective_value": chosen.objective_value,
        "best_validated_step": chosen.best_validated_step,
        "split": split,
        "dataset_path": str(list_file),
        "n_items": len(dataset),
        "blocks": block_file(list_file).name if dataset.blocks is not None else None,
        "n_blocks": len(set(columns["block"].tolist())),
        "n_rows": table.num_rows,
        "code_version": code_version(),
        "device": str(device),
        "render_seconds": round(render_s, 3),
        "items_per_s": round(len(dataset) / render_s, 3) if render_s > 0 else None,
    }
    target = Path(out_dir) if out_dir is not None else run_dir / EVAL_DIR
    picture = pictures[0] if pictures else None
    items_path, protocol_path = write_evaluation(target, table, protocol, picture)
    if picture is not None:
        protocol["picture"] = EVAL_PICTURE
    if out_dir is None:  # the run's own evaluation: its journal says which checkpoint
        append_event(
            run_dir,
            "evaluated",
            step=chosen.step,
            path=run_relative(chosen.path, run_dir),
            rule=chosen.rule,
            picture=f"{EVAL_DIR}/{EVAL_PICTURE}" if picture is not None else None,
        )
    return EvalResult(
        items_path, protocol_path, protocol, table.num_rows, time.perf_counter() - start
    )


def run_relative(path: Path, run_dir: Path) -> str:
    """`path` relative to the run folder when inside it (the folder moves with its study),
    as the trainer's `checkpointed` events name checkpoints; else absolute."""
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    return str(path.relative_to(run_dir) if path.is_relative_to(run_dir) else path)


def evaluate_trial(
    run_dir: str | Path,
    config: TrainerConfig,
    objective: str,
    mode: str,
    device: torch.device | str | None = None,
) -> EvalResult:
    """The end-of-trial call for the Ray adapter: the study's objective picks `best`.

    Call it once per trial on rank 0 after training returned (the worker holds the GPU);
    it writes run_dir/eval/ and returns what it wrote. Raises EvaluationError.
    """
    ev = dataclasses.replace(config.evaluation, objective=objective, objective_mode=mode)
    return evaluate_run(run_dir, dataclasses.replace(config, evaluation=ev), device=device)


__all__ = [
    "ConfigError",
    "EvaluationError",
    "EvalResult",
    "choose_checkpoint",
    "evaluate_run",
    "evaluate_trial",
    "evaluation_list_file",
    "item_set_hash",
]
