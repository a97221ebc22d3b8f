"""The Ray cluster a study runs on: start a local one, or join one (token auth included).

A local Ray gets its dashboard on loopback (or `--dashboard-host`) and a `trial_slot`
resource per concurrent trial, so trials do not hold the CPUs their Train workers need.
Joining `--address` first checks in seconds that something answers there (ray.init would
retry for minutes) and sends Ray's auth token when this machine has one. Every Ray process
inherits `ray_env()`'s variables (W&B mode, no usage stats, the repo on PYTHONPATH).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from study.plan import REPO_ROOT, StudyError
from study.resources import TrialRequest, alive_node_resources, check_trial_fits


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds when the cluster address does not answer (ray.init would retry for minutes)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"--address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise StudyError(
            f"--address {address}: no Ray cluster answers there ({exc}); start one with "
            "`ray start --head` or leave --address out to run locally"
        ) from None


def ray_env(wandb_mode: str) -> dict[str, str]:
    """Variables every Ray process needs; set before ray.init so workers inherit them."""
    env = {
        "WANDB_MODE": wandb_mode,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get(
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120"
        ),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        ),
    }
    os.environ.update(env)
    return env


def send_auth_token_if_available() -> None:
    """Join a cluster with Ray's auth token when this machine has one.

    `ray start --head` turns token authentication on when ~/.ray/auth_token exists, but
    `ray.init(address=...)` sends the token only under RAY_AUTH_MODE=token (Ray switches that on by
    itself only for clusters it finds without an address). A token sent to a cluster without
    authentication is ignored, so sending it whenever there is one is safe. An explicit
    RAY_AUTH_MODE from the user wins.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or auth_token_file().is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def auth_token_file() -> Path:
    """Where Ray reads its auth token from: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    return Path(
        os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")
    ).expanduser()


def dashboard_sign_in(dashboard_url: str, address: str | None = None) -> str:
    """The start-up sentence saying how to get past the dashboard's token dialog.

    A Ray 2.60 cluster with token authentication opens its dashboard on an "Authentication Token
    Required" dialog over an empty page, and nothing the study printed said which token. It is
    the cluster's own: `ray get-auth-token` prints it from where Ray finds it (RAY_AUTH_TOKEN,
    else the file), so the sentence names the command and the file. The dashboard listens on the
    head's loopback, so a laptop reaches it through an ssh tunnel to the head: the joined
    cluster's `address` host, else this machine. Empty without a dashboard or without
    authentication (RAY_AUTH_MODE=disabled, or a joined cluster and no token on this machine).
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN")) or auth_token_file().is_file()
    if not dashboard_url or mode == "disabled" or (mode != "token" and not has_token):
        return ""
    where = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else str(auth_token_file())
    url = urlsplit(dashboard_url)
    port, host = url.port or 8265, url.hostname or "127.0.0.1"
    head = socket.gethostname()
    if address and address != "auto":
        head = address.split("://", 1)[-1].rpartition(":")[0] or head
    return (
        f"sign in to the dashboard with Ray's auth token: `ray get-auth-token` prints it (from "
        f'{where}); paste it into the "Authentication Token Required" dialog. From another '
        f"machine: `ssh -L {port}:{host}:{port} {head}`, then open http://localhost:{port}"
    )


# A local cluster's trial slots: trials reserve one instead of a CPU; how many run at once is
# Tune's max_concurrent_trials (study.resources.decide_concurrency), not this count.
LOCAL_TRIAL_SLOTS = 1024


def start_ray(address: str | None, env: dict[str, str], dashboard_host: str) -> str:
    """Start a local Ray with its dashboard on loopback, or join `address`. Returns the dashboard URL."""
    if address:
        send_auth_token_if_available()  # before Ray is imported: Ray reads its config once
    import ray

    if address:
        # Another machine's raylet does not inherit our environment: send it with every task
        try:
            context = ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        except ConnectionError as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise StudyError(
                f"--address {address}: could not join the Ray cluster ({reason}); a cluster "
                "with token authentication needs its token in ~/.ray/auth_token or "
                "RAY_AUTH_TOKEN on this machine"
            ) from None
    else:
        # Trials reserve a `trial_slot` instead of a CPU so both CPUs stay free for Train workers.
        # address="local": always a new cluster of our own. Without it ray.init joins the one
        # another user started with `ray start --head` (found in /tmp/ray/ray_current_cluster,
        # or RAY_ADDRESS), whose resources and storage this study never asked for.
        # No runtime_env: this cluster's processes inherit os.environ (ray_env set it), and a
        # runtime_env would make every actor wait for the runtime-env agent (~0.5 s each).
        # One machine that is the whole cluster has no other node to lose: Train's per-trial
        # preemption-watcher actor (an extra process, ~3 CPU-s per trial here) has no job.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        context = ray.init(
            address="local",
            include_dashboard=True,
            dashboard_host=dashboard_host,
            resources={"trial_slot": LOCAL_TRIAL_SLOTS},
            log_to_driver=False,
        )
    url = context.dashboard_url or ""
    return url if not url or url.startswith("http") else f"http://{url}"


def gpus_per_trial(requested: float | None, workers: int) -> float:
    """--gpus-per-trial, or by default one GPU per worker when the cluster has GPUs (else 0)."""
    if requested is not None:
        return requested
    import ray

    return float(workers) if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def cluster_nodes() -> list[dict[str, float]]:
    """Each alive node's total resources."""
    import ray

    return alive_node_resources(ray.nodes())


def check_cluster_fits(request: TrialRequest, autoscaling: bool) -> str | None:
    """Refuse (ResourceError) a trial the connected cluster can never place, before the Tuner
    starts: Ray would keep it pending forever without a word. Returns the warning to print
    once instead on an autoscaling cluster, None when the trial fits."""
    import ray

    return check_trial_fits(
        request,
        ray.cluster_resources(),
        cluster_nodes(),
        autoscaling=autoscaling,
    )
