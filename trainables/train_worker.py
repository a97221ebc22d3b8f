"""The Ray Train worker side of a trial: what runs in each rank of the trial's TorchTrainer.

`train_worker` drives the plain loop in `trainables.gslrm.train` through its hooks:
`prepare_model` (DDP), `prepare_data_loader` (which keeps the trainer's own seeded
DistributedSampler), `ray.train.report` with a `Checkpoint` at every validation round (the
file hard-linked into Ray Train's storage, one copy on disk), and resume from
`ray.train.get_checkpoint()` read in place after a worker failure. Rank 0 then evaluates the
chosen checkpoint (`evaluate_at_end`).

What this side adds to the run's journal (`runs/<trial>/journal.jsonl`, see
`trainables.journal`; the trainer writes the rest): `reported` after each report reached Ray
Train, and `evaluation_failed` when the end-of-trial evaluation raised.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainables.gslrm.config import TrainerConfig, config_from_dict
from trainables.journal import ERROR_MAX_CHARS, append_event

# Where older code copied the resume checkpoint (1.2 GB at full size); a killed worker leaked it.
STALE_RESUME_PREFIX = ".resume_"


@contextmanager
def staged_for_report(checkpoint_file: Path) -> Iterator[Path]:
    """A folder holding only `checkpoint_file`, for `Checkpoint.from_directory`; removed after.

    The folder is made beside the checkpoint (the run folder), so the file is hard-linked on
    its own filesystem instead of copied (1.2 GB at full size). Where a link is refused (a
    filesystem without hard links, or one that answers EXDEV), the file is copied.
    """
    with tempfile.TemporaryDirectory(
        prefix=".report_", dir=checkpoint_file.parent.parent
    ) as folder:
        link_or_copy(checkpoint_file, Path(folder) / checkpoint_file.name)
        yield Path(folder)


def link_or_copy(source: Path, target: Path) -> str:
    """Hard-link `source` to `target`, or copy it when the filesystem refuses the link.

    Returns "linked" or "copied".
    """
    try:
        os.link(source, target)
        return "linked"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    shutil.copy2(source, target)
    return "copied"


def with_tune_step(metrics: dict[str, Any]) -> dict[str, Any]:
    """A report for Tune: Tune's TensorBoard logger steps by `timesteps_total` when a result has
    it (else by Tune iteration 1, 2, 3), so it gets the trainer's `step`, as in W&B,
    metrics.jsonl and the curves."""
    return {**metrics, "timesteps_total": metrics["step"]} if "step" in metrics else metrics


@contextmanager
def resume_checkpoint_file(restored: Any) -> Iterator[Path | None]:
    """The ckpt_*.pt file of the checkpoint Ray Train restored (None: nothing restored).

    Read in place: `Checkpoint.as_directory` yields the checkpoint's own folder on a local or
    shared filesystem (the study's storage), so nothing is copied; only a checkpoint on remote
    storage (s3://) is downloaded, into a folder Ray removes when the context ends.
    """
    if restored is None:
        yield None
        return
    with restored.as_directory() as folder:
        yield next(iter(sorted(Path(folder).glob("ckpt_*.pt"))), None)


def remove_stale_resume_copies(run_dir: Path) -> list[Path]:
    """Delete the `.resume_*` copies older code left in `run_dir` when a worker was killed;
    returns what was removed."""
    stale = sorted(run_dir.glob(f"{STALE_RESUME_PREFIX}*"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point: one rank of one trial.

    loop_config: {"config": the trainer config as a dict, "trial_id", "run_dir", and optionally
    "train_run_dir" (Ray Train's storage folder of this run, for linked checkpoints) and
    "run_info" (trial id, study, seed, code version, W&B grouping; recorded in the journal)}.
    """
    import ray.train
    import ray.train.torch

    from trainables.gslrm.train import Hooks, TrainingDiverged, train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = config_from_dict(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    # run_info (study, seed, code version, W&B grouping) comes from run_trial; a caller driving
    # train_worker directly (the DDP and two-node tests) may leave it out.
    run_info = loop_config.get("run_info") or {"trial_id": loop_config["trial_id"]}
    grouping = run_info.get("wandb", {})
    if rank == 0:
        remove_stale_resume_copies(run_dir)

    # Where Ray Train keeps reported checkpoints (STUDY/train/<run>): linked there, one copy on
    # disk. Without it (a caller driving train_worker directly) Ray copies as usual.
    train_run_dir = Path(loop_config["train_run_dir"]) if "train_run_dir" in loop_config else None

    def upload(checkpoint, dir_name: str):
        # Ray would copy the staged file into train/ (a second 1.2 GB copy of the run's own
        # file); a hard link there keeps one copy on disk under both names.
        target = train_run_dir / dir_name
        target.mkdir(parents=True, exist_ok=True)
        for source in Path(checkpoint.path).iterdir():
            link_or_copy(source, target / source.name)
        return ray.train.Checkpoint.from_directory(str(target))

    def report(metrics: dict[str, float], checkpoint_file: Path | None) -> None:
        metrics = with_tune_step(metrics)
        if checkpoint_file is None:
            ray.train.report(metrics)
        else:
            with staged_for_report(checkpoint_file) as folder:
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                    **({"checkpoint_upload_fn": upload} if train_run_dir else {}),
                )
        if rank == 0 and "step" in metrics:
            append_event(run_dir, "reported", step=metrics["step"])

    with resume_checkpoint_file(ray.train.get_checkpoint()) as resume_file:
        hooks = Hooks(
            device=ray.train.torch.get_device(),
            rank=rank,
            world_size=world,
            wrap_model=ray.train.torch.prepare_model,
            wrap_loader=ray.train.torch.prepare_data_loader,
            report=report,
            resume_checkpoint=resume_file,
            wandb_run_name=loop_config["trial_id"],
            wandb_group=grouping.get("group", ""),
            wandb_tags=tuple(grouping.get("tags", ())),
            wandb_job_type=grouping.get("job_type", ""),
            run_info=run_info,
        )
        try:
            train(config, run_dir, hooks)
        except TrainingDiverged:
            # Not a crash to retry from a checkpoint: the same data and weights diverge again.
            # The trainer journaled it; the worker ends normally so Train does not restart it.
            return
    if rank == 0:
        evaluate_at_end(run_dir, config, hooks.device)


def evaluate_at_end(run_dir: Path, config: TrainerConfig, device: Any) -> None:
    """Rank 0, after training: score the study's chosen checkpoint on every evaluation item
    (run_dir/eval/; the evaluator journals `evaluated`).

    Any exception here (no checkpoint, a damaged test sample's DataError, CUDA out of memory)
    is journaled as `evaluation_failed` with its message and the trial stays finished: raising
    would make Ray Train restart the workers, evaluate again each time and record the trial
    errored after full training. `python -m analysis.evaluate RUN_DIR` can redo it.
    """
    from trainables.gslrm.evaluate import evaluate_trial

    evaluation = config.evaluation
    try:
        evaluate_trial(
            run_dir, config, evaluation.objective, evaluation.objective_mode, device=device
        )
    except Exception as exc:  # noqa: BLE001 - training is done; the evaluation can be redone
        message = f"{type(exc).__name__}: {exc}".strip()
        append_event(run_dir, "evaluation_failed", error=message[:ERROR_MAX_CHARS])
