"""Driver-side recovery, after the study: what a trial killed mid-fit could not finish itself.

`rebuild_wandb_run` writes again the W&B offline run of a trial whose workers were killed (an
ASHA stop), from the run folder's metrics.jsonl and journal, and journals `wandb_rebuilt` so
it is done once. Runs in the driver process (`study.run`), never in a trial or a worker.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trainables.gslrm.config import load_config
from trainables.journal import TrialJournal, append_event, metric_records


def rebuild_wandb_run(run_dir: Path) -> bool:
    """Finish the W&B offline run of a trial whose worker was killed mid-fit; True if rebuilt.

    When Tune stops a trial (ASHA) its Train workers are killed, so the trainer never finishes
    its W&B run and the offline file holds only a header. The run folder still has everything
    the run logged (metrics.jsonl, config.yaml, the journal's attempt record of the trial id and
    W&B grouping): the offline run is written again from them, at the trainer's steps, with the
    same id, group and tags, and finished (validation pictures are not replayed). Runs whose
    newest attempt's loop ended by itself (the journal says trained, diverged or
    attempt_failed) are left alone.
    """
    from trainables.gslrm.train import Hooks, MetricsLog

    journal = TrialJournal.read(run_dir)
    info = journal.info
    wandb_dir = run_dir / "wandb_logs"
    if journal.loop_ended or not info or not info.get("trial_id") or not wandb_dir.is_dir():
        return False
    config = load_config(run_dir / "config.yaml")
    if config.training.logging.wandb.mode == "disabled":
        return False
    records = metric_records(run_dir)  # a line torn by the kill is skipped
    for old in (wandb_dir / "wandb").glob(f"*-{info['trial_id']}"):
        shutil.rmtree(old, ignore_errors=True)  # the killed run's header-only folder
    grouping = info.get("wandb", {})
    hooks = Hooks(
        wandb_run_name=str(info["trial_id"]),
        wandb_group=grouping.get("group", ""),
        wandb_tags=tuple(grouping.get("tags", ())),
        wandb_job_type=grouping.get("job_type", ""),
    )
    log = MetricsLog(run_dir, config, hooks)
    try:
        for record in records:
            step = record.pop("step", None)
            if isinstance(step, int) and log.wandb_run is not None:
                log.wandb_run.log(record, step=step)
    finally:
        log.close()
    append_event(run_dir, "wandb_rebuilt")
    return True
