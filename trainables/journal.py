"""One journal per trial: what happened to a run, in order, keyed by trainer step.

    runs/<trial>/journal.jsonl      one JSON object per line, append-only

Every line is an event {"event": NAME, "time": unix seconds, ...fields}. Writers:

    attempt_started      world_size, resumed_from_step, seed, code_version, info (the trial's
                         id, study, W&B grouping)                    trainer, rank 0, loop start
    validated            step, metrics {name: value}, gpu_s (this attempt's GPU seconds so far)
                                                                     trainer, rank 0
    checkpointed         step, path (relative to the run folder)    trainer, rank 0
    reported             step (the report reached Ray Train)        Ray worker, rank 0
    diverged             step, error (non-finite loss)              trainer, rank 0
    attempt_failed       error (the loop raised anything else)      trainer, rank 0
    trained              final_step, steps_this_call, wall_s, gpu_s (the loop returned)
                                                                     trainer, rank 0
    training_failed      error (Ray Train gave up on the trial after its own restarts, or
                         the trial could not start)                 Tune trial (driver side)
    evaluated            step, path (the chosen checkpoint), rule,  evaluator
                         picture (eval/picture.png; null without one)
    evaluation_failed    error (the end-of-trial evaluation raised) Ray worker, rank 0
    wandb_rebuilt        (the driver rebuilt a killed run's W&B)    driver

Writes are newline-guarded, flushed and fsynced (`append_line`): a writer killed mid-line leaves
a torn tail, and the next writer first ends that line, so the fragment stays one unreadable
line that readers skip instead of swallowing the next record. `read_json_lines` is the one
tolerant reader of this file and of the trainer's metrics.jsonl.

`TrialJournal` is the one reader of a trial's fate: its outcome (the status rule), its curve
(validation rounds by step), its best step by an objective, and its compute summed over
attempts. The Ray adapter, the searcher and the analysis all ask it.

Standard library only, so `analysis/` reads it without Ray or torch.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL_FILE = "journal.jsonl"
METRICS_FILE = "metrics.jsonl"
# Every status a trial can end with; a summary stating anything else (e.g. "running", written
# before the end) is not a final word and the rule decides instead.
STATUSES = ("finished", "diverged", "errored", "stopped_early")
ERROR_MAX_CHARS = 500
# Events after which the loop of an attempt is over (it finished its W&B run itself).
ENDING_EVENTS = ("trained", "diverged", "attempt_failed", "wandb_rebuilt")
STEP_EVENTS = ("validated", "checkpointed", "reported", "diverged")


# ---------------------------------------------------------------------------------------
# writing and reading lines


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append `record` as one JSON line to `path`, durably (flush + fsync).

    When the file does not end with a newline (a writer was killed mid-line), a newline is
    written first: the torn fragment then stays a line of its own, which readers skip.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record) + "\n"
    with path.open("a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                line = "\n" + line
        handle.write(line.encode("utf-8"))  # append mode: always at the end
        handle.flush()
        os.fsync(handle.fileno())


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file in order; [] when the file is missing.

    Blank lines, torn fragments and lines that are not an object are skipped, never fatal.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    records = []
    for raw in data.splitlines():
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def append_event(run_dir: Path, event: str, **fields: Any) -> dict[str, Any]:
    """Append one event to run_dir/journal.jsonl; returns the record written."""
    record = {"event": event, "time": time.time(), **fields}
    append_line(Path(run_dir) / JOURNAL_FILE, record)
    return record


def metric_records(run_dir: Path) -> list[dict[str, Any]]:
    """The trainer's metrics.jsonl records in order (torn lines skipped)."""
    return read_json_lines(Path(run_dir) / METRICS_FILE)


# ---------------------------------------------------------------------------------------
# reading a trial


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


@dataclass(frozen=True)
class Outcome:
    """status: one of STATUSES; error: one line or None; last_step: the trainer's newest step
    (0 when nothing is known); diverged_step: the step whose loss was non-finite, or None."""

    status: str
    error: str | None
    last_step: int
    diverged_step: int | None = None


@dataclass(frozen=True)
class Attempt:
    """One worker-group start and the events it wrote until the next start.

    wall_s: seconds from its start to its trained event's end (the loop's own figure), else to
    its last event (a killed attempt counts the time its logged steps span); gpu_s: the trained
    event's GPU seconds, else the last validated event's running figure (0 when none).
    """

    started: dict[str, Any]
    events: tuple[dict[str, Any], ...]

    def last(self, name: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == name), None)

    @property
    def ended(self) -> bool:
        return any(e.get("event") in ENDING_EVENTS for e in self.events)

    @property
    def wall_s(self) -> float:
        trained = self.last("trained")
        if trained is not None and math.isfinite(_float(trained.get("wall_s"))):
            return _float(trained["wall_s"])
        times = [_float(e.get("time")) for e in self.events if e.get("event") != "wandb_rebuilt"]
        start = _float(self.started.get("time"))
        finite = [t for t in times if math.isfinite(t)]
        return max(0.0, max(finite) - start) if finite and math.isfinite(start) else 0.0

    @property
    def gpu_s(self) -> float:
        trained = self.last("trained")
        if trained is not None and math.isfinite(_float(trained.get("gpu_s"))):
            return _float(trained["gpu_s"])
        validated = self.last("validated")
        value = _float(validated.get("gpu_s")) if validated is not None else math.nan
        return value if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class Compute:
    """wall_s, gpu_s: summed over attempts; attempts: worker-group starts (restarts + 1)."""

    wall_s: float
    gpu_s: float
    attempts: int

    @property
    def restarts(self) -> int:
        return max(0, self.attempts - 1)


@dataclass(frozen=True)
class TrialJournal:
    """A trial's journal, read once; every question about the trial's fate is a method here."""

    events: tuple[dict[str, Any], ...]

    @classmethod
    def read(cls, run_dir: Path | None) -> TrialJournal:
        """The journal of `run_dir` (empty when there is none, or run_dir is None)."""
        if run_dir is None:
            return cls(())
        events = read_json_lines(Path(run_dir) / JOURNAL_FILE)
        return cls(tuple(e for e in events if isinstance(e.get("event"), str)))

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    def last(self, name: str) -> dict[str, Any] | None:
        found = self.of(name)
        return found[-1] if found else None

    @property
    def attempts(self) -> list[Attempt]:
        attempts: list[Attempt] = []
        started, events = None, []
        for event in self.events:
            if event["event"] == "attempt_started":
                if started is not None:
                    attempts.append(Attempt(started, tuple(events)))
                started, events = event, []
            elif started is not None:
                events.append(event)
        if started is not None:
            attempts.append(Attempt(started, tuple(events)))
        return attempts

    @property
    def info(self) -> dict[str, Any] | None:
        """The newest attempt's record of the trial: seed, code_version and its `info` fields
        (trial_id, study, W&B grouping); None before any attempt started."""
        started = self.last("attempt_started")
        if started is None:
            return None
        info = started.get("info") if isinstance(started.get("info"), dict) else {}
        return {"seed": started.get("seed"), "code_version": started.get("code_version"), **info}

    @property
    def loop_ended(self) -> bool:
        """True when the newest attempt's loop returned or raised (or its W&B run was rebuilt);
        False for a worker killed mid-fit, or when no attempt started."""
        attempts = self.attempts
        return bool(attempts) and attempts[-1].ended

    @property
    def curve(self) -> dict[int, dict[str, float]]:
        """{step: validation metrics} in step order; a step validated again (a resumed attempt)
        keeps its newest values."""
        rounds: dict[int, dict[str, float]] = {}
        for event in self.of("validated"):
            step, metrics = _int(event.get("step")), event.get("metrics")
            if step is not None and isinstance(metrics, dict):
                rounds[step] = {str(k): _float(v) for k, v in metrics.items()}
        return dict(sorted(rounds.items()))

    def best_step(self, objective: str, mode: str = "max", among=None) -> int | None:
        """The validated step with the best finite `objective` (ties: the earliest step),
        optionally only among the steps in `among`; None when no step has a finite value."""
        sign = 1.0 if mode == "max" else -1.0
        scored = {
            step: metrics[objective]
            for step, metrics in self.curve.items()
            if math.isfinite(metrics.get(objective, math.nan)) and (among is None or step in among)
        }
        if not scored:
            return None
        return min(scored, key=lambda s: (-sign * scored[s], s))

    @property
    def last_step(self) -> int:
        """The newest trainer step any event names (0 when none)."""
        steps = [_int(e.get("step")) for e in self.events if e["event"] in STEP_EVENTS]
        steps += [_int(e.get("final_step")) for e in self.of("trained")]
        return max((s for s in steps if s is not None), default=0)

    def compute(self) -> Compute:
        attempts = self.attempts
        return Compute(
            wall_s=sum(a.wall_s for a in attempts),
            gpu_s=sum(a.gpu_s for a in attempts),
            attempts=len(attempts),
        )

    def outcome(
        self, max_steps: int | None, error: str | None = None, last_step: int | None = None
    ) -> Outcome:
        """The trial's status, first matching rule wins.

        1. A `diverged` event: "diverged", with its message and step (a non-finite loss is a
           result of the settings, not a crash: it wins over the error it also raised).
        2. `error` (the failure's message, e.g. error.txt's last line) is given, or the journal
           has a `training_failed` event: "errored" with that message.
        3. A `trained` event: "finished" at its final step, unless `last_step` (the newest step
           Tune received) is below that step: Tune stopped the trial on an earlier report
           while its loop was finishing, so the study's record of it ends there (rule 4).
        4. Otherwise the trial was stopped from outside (ASHA, the study ending): "finished"
           when its newest step (`last_step`, else the journal's) reached `max_steps`, else
           "stopped_early". With `max_steps` unknown, "finished".

        last_step: the newest step Tune received, when the caller knows it (the searcher, the
        analysis); None: the journal's newest step, and a trained event counts as it is.
        """
        logged = last_step if last_step is not None else self.last_step
        diverged = self.last("diverged")
        if diverged is not None:
            step = _int(diverged.get("step"))
            message = str(diverged.get("error") or "diverged")[:ERROR_MAX_CHARS]
            return Outcome("diverged", message, step if step is not None else logged, step)
        failed = self.last("training_failed")
        error = error or (str(failed.get("error") or "training failed") if failed else None)
        if error:
            return Outcome("errored", error.strip()[:ERROR_MAX_CHARS], logged)
        trained = self.last("trained")
        final_step = _int(trained.get("final_step")) if trained is not None else None
        if final_step is not None and (last_step is None or last_step >= final_step):
            return Outcome("finished", None, final_step)
        if max_steps is not None and logged < max_steps:
            return Outcome("stopped_early", None, logged)
        return Outcome("finished", None, logged)

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """The newest evaluated / evaluation_failed event (None: never evaluated)."""
        found = [e for e in self.events if e["event"] in ("evaluated", "evaluation_failed")]
        return found[-1] if found else None


def classify_outcome(
    run_dir: Path | None,
    max_steps: int | None,
    error: str | None = None,
    last_step: int | None = None,
) -> Outcome:
    """`TrialJournal.outcome` of run_dir's journal (see there); run_dir None: no journal."""
    return TrialJournal.read(run_dir).outcome(max_steps, error, last_step)
