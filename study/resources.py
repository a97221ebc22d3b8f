"""Can the cluster ever run one trial? Checked at study start-up, before the Tuner starts.

Ray does not refuse a request it cannot place: the trial (or its Train worker group) stays
pending with no message until someone kills the driver (issue 16, defect 9: `--gpus-per-trial 1`
on a CPU machine). And `--gpus-per-trial` below `--workers-per-trial` gives two DDP ranks one
GPU, which NCCL refuses at the first all-reduce (defect 3). These checks turn both into one
message naming the request and the cluster.

Pure functions over plain values (no Ray import): the study passes the numbers from its command
line and what Ray reports, `ray.cluster_resources()` and `ray.nodes()`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Amounts are floats (fractional CPUs and GPUs); Ray itself works in 1e-4 units
EPS = 1e-6


class ResourceError(ValueError):
    """A trial asks for resources it cannot get (the message names request, cluster and fix)."""


@dataclass(frozen=True)
class TrialRequest:
    """What one running trial holds, as Ray bundles.

    trial: the Tune trial's own bundle (the function that drives TorchTrainer.fit), e.g.
        {"CPU": 1} or {"trial_slot": 1, "CPU": 0}
    worker: one Ray Train worker's bundle, e.g. {"CPU": 1, "GPU": 1}
    workers: Train workers (DDP ranks) per trial; each gets its own `worker` bundle
    """

    trial: Mapping[str, float]
    worker: Mapping[str, float]
    workers: int

    def total(self) -> dict[str, float]:
        """All bundles summed: {resource: amount}, zero amounts left out."""
        names = set(self.trial) | set(self.worker)
        total = {
            name: self.trial.get(name, 0.0) + self.workers * self.worker.get(name, 0.0)
            for name in names
        }
        return {name: amount for name, amount in sorted(total.items()) if amount > 0}


def format_resources(resources: Mapping[str, float], names: Sequence[str] | None = None) -> str:
    """{"CPU": 2.0, "GPU": 0.5} -> "CPU 2, GPU 0.5" (only `names`, when given; missing ones 0)."""
    keys = list(names) if names is not None else sorted(resources)
    parts = [f"{name} {resources.get(name, 0.0):g}" for name in keys]
    return ", ".join(parts) if parts else "nothing"


def gpus_per_worker(workers: int, gpus_per_trial: float) -> float:
    """Split a trial's GPUs over its Train workers, refusing splits that cannot train.

    Supported: no GPU (0); one worker with any share of a GPU (0 < g < 1 packs several trials on
    one GPU, a single rank has no NCCL peer to clash with); one whole GPU per worker.
    Refused: fewer GPUs than workers (ranks would share a GPU, which NCCL rejects), a share
    above 1 that is not whole (Ray refuses it), and several GPUs per worker (each DDP rank
    trains on one device; the others would sit idle, reserved).
    """
    if workers < 1:
        raise ResourceError(f"--workers-per-trial {workers}: a trial needs at least 1 worker")
    if gpus_per_trial < 0 or not math.isfinite(gpus_per_trial):
        raise ResourceError(f"--gpus-per-trial {gpus_per_trial:g}: must be 0 or more")
    if gpus_per_trial == 0:
        return 0.0
    per_worker = gpus_per_trial / workers
    if workers > 1 and per_worker < 1 - EPS:
        raise ResourceError(
            f"--gpus-per-trial {gpus_per_trial:g} with --workers-per-trial {workers} puts "
            f"{workers} DDP ranks on {per_worker:g} GPU each, so ranks would share a GPU and "
            f"NCCL refuses duplicate GPUs; use --gpus-per-trial {workers} (one GPU per rank) "
            f"or --workers-per-trial 1"
        )
    if per_worker > 1 + EPS:
        raise ResourceError(
            f"--gpus-per-trial {gpus_per_trial:g} with --workers-per-trial {workers} gives each "
            f"DDP rank {per_worker:g} GPUs, but a rank trains on one GPU; use "
            f"--workers-per-trial {math.ceil(per_worker * workers - EPS)} (one rank per GPU) or "
            f"--gpus-per-trial {workers}"
        )
    return 1.0 if per_worker > 1 - EPS else per_worker


def alive_node_resources(nodes: Sequence[Mapping]) -> list[dict[str, float]]:
    """`ray.nodes()` entries -> the total resources of each alive node."""
    return [dict(node.get("Resources", {})) for node in nodes if node.get("Alive", False)]


def shortfall(need: Mapping[str, float], have: Mapping[str, float]) -> dict[str, float]:
    """{resource: amount needed} for each resource `have` holds too little of."""
    return {
        name: amount
        for name, amount in need.items()
        if amount > 0 and amount > have.get(name, 0.0) + EPS
    }


def _bundles_that_fit(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many copies of `bundle` one node holds at once (a bundle never spans nodes)."""
    counts = [
        math.floor(node.get(name, 0.0) / amount + EPS)
        for name, amount in bundle.items()
        if amount > 0
    ]
    return min(counts) if counts else 1 << 30


def _without(node: Mapping[str, float], bundle: Mapping[str, float]) -> dict[str, float]:
    return {name: node.get(name, 0.0) - bundle.get(name, 0.0) for name in node}


def fits_on_nodes(request: TrialRequest, nodes: Sequence[Mapping[str, float]]) -> bool:
    """Whether one trial's bundles can be placed at once on these (empty) nodes.

    Exact for this shape of request (one trial bundle + identical worker bundles): try the
    trial bundle on each node that holds it, then count the worker bundles every node holds.
    """
    for index, node in enumerate(nodes):
        if shortfall(request.trial, node):
            continue
        rest = [_without(n, request.trial) if i == index else n for i, n in enumerate(nodes)]
        if sum(_bundles_that_fit(n, request.worker) for n in rest) >= request.workers:
            return True
    return False


def check_trial_fits(
    request: TrialRequest,
    cluster: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] | None = None,
    autoscaling: bool = False,
) -> str | None:
    """Refuse a trial that this cluster can never start, naming both.

    request: one trial's bundles; cluster: total resources (`ray.cluster_resources()`);
    nodes: each alive node's resources (`alive_node_resources(ray.nodes())`), to also catch a
    worker bundle larger than any single node. Returns None when the trial fits. When it does
    not: raises ResourceError, or, on an autoscaling cluster (nodes may still join), returns
    the message as a warning for the caller to print once while Ray keeps waiting.
    """
    total = request.total()
    shown = sorted(set(total) | ({"CPU", "GPU"} & set(cluster)) | {"CPU"})
    trial_own = {name: amount for name, amount in request.trial.items() if amount > 0}
    parts = f"{request.workers} Train worker(s) x [{format_resources(request.worker)}]"
    if trial_own:
        parts += f" + the trial's own [{format_resources(trial_own)}]"
    asked = f"a trial needs {format_resources(total)} ({parts})"
    short = shortfall(total, cluster)
    if short:
        missing = ", ".join(
            f"{name} {amount:g} > {cluster.get(name, 0.0):g}" for name, amount in short.items()
        )
        problem = (
            f"{asked} but the cluster has {format_resources(cluster, shown)} in total ({missing})"
        )
    elif nodes is not None and not fits_on_nodes(request, nodes):
        listed = "; ".join(f"[{format_resources(node, shown)}]" for node in nodes)
        problem = (
            f"{asked} but no placement fits the cluster's nodes ({listed}; a worker's bundle "
            "must fit on one node)"
        )
    else:
        return None
    fix = (
        "lower --gpus-per-trial, --cpus-per-worker or --workers-per-trial, or join a cluster "
        "that has them with --address"
    )
    if autoscaling:
        return f"{problem}; the cluster autoscales, so the study waits for nodes to join"
    raise ResourceError(f"{problem}: {fix}")


def trials_that_fit(request: TrialRequest, nodes: Sequence[Mapping[str, float]]) -> int:
    """How many trials the cluster holds at once (0 when not even one).

    nodes: each alive node's total resources. Train worker bundles are packed node by node (a
    bundle never spans nodes) and shared out `request.workers` per trial; the trials' own
    bundles (the driver: a trial slot, or a sliver of the head node's resource) are counted the
    same way. E.g. 4 nodes of 8 GPUs, 2 workers of 1 GPU per trial: 16 trials.
    """
    worker_bundles = sum(_bundles_that_fit(node, request.worker) for node in nodes)
    trials = worker_bundles // max(1, request.workers)
    if any(amount > 0 for amount in request.trial.values()):
        trials = min(trials, sum(_bundles_that_fit(node, request.trial) for node in nodes))
    return trials


def decide_concurrency(
    cap: int | None, request: TrialRequest, nodes: Sequence[Mapping[str, float]]
) -> tuple[int, str]:
    """Trials to run at once, and the sentence that says why.

    As many as the cluster holds (`trials_that_fit`), at most `cap` (--max-concurrent); at least
    one (an autoscaling cluster that holds none yet waits for nodes).
    """
    fit = trials_that_fit(request, nodes)
    count = max(1, min(fit, cap) if cap is not None else fit)
    cluster = format_resources(
        {
            name: sum(node.get(name, 0.0) for node in nodes)
            for name in sorted(set(request.worker) | {"CPU"})
        }
    )
    why = (
        f"the cluster ({cluster} on {len(nodes)} node(s)) holds {fit} trial(s) of "
        f"{request.workers} worker(s) x [{format_resources(request.worker)}]"
    )
    if cap is not None and cap < fit:
        why += f"; --max-concurrent {cap} caps it"
    return count, why
