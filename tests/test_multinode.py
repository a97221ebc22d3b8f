"""A trial across two Ray nodes: a head and a second `ray start --address` on this machine, each
with its own resources, one Train worker pinned to each node (a custom resource both nodes hold
once), gloo DDP between them, and one shared storage folder for both.

The 2-worker trial must follow the 1-worker trial to the DDP test's tolerance (tests/test_ddp.py,
same settings): weights after 6 AdamW steps within 1e-4, validation PSNR within 0.01 dB.

The cluster is private to the test: its own temp folder (so the `ray_current_cluster` file that
a plain `ray.init()` follows is not the machine's shared one), its own ports, and it is stopped
by signalling the two `ray start --block` processes it started (never `ray stop`, which would
stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.test_study import (
    REPO,
    cluster_env,
    free_port,
    node_ports,
    stop_block_node,
    wait_for_port,
)
from trainables.gslrm.checkpoint import read_checkpoint
from trainables.gslrm.config import config_to_dict, load_config
from trainables.gslrm.data.synthetic import generate_dataset

pytestmark = pytest.mark.slow

PIN = "mn_train_slot"  # one per node: a worker needing one lands on a node of its own

# Same trainer settings as tests/test_ddp.py: same global batch (1 x 2 items vs 2 x 1), fixed
# item order, and only losses that are plain means over items
DDP_SETTINGS = [
    "model.image_tokenizer.image_size=32",
    "training.schedule.max_steps=6",
    "training.schedule.warmup=1",
    "validation.val_every=3",
    "training.checkpointing.checkpoint_every=3",
    "validation.max_items=2",
    "training.dataloader.shuffle=false",
    "training.losses.masked_l2_loss=false",
    "training.losses.background_loss_weight=0.0",
    "training.logging.wandb.mode=disabled",
    "training.logging.wandb.log_every=1",
]

# The driver, run as its own process so that its Ray client is the only one in it. It joins
# the cluster, runs the 1-worker then the 2-worker trial through trainables.ray_trainable's
# train_worker, and records each rank's node.
DRIVER = r"""
import json, sys, time
from pathlib import Path
import ray, ray.train
from ray.train.torch import TorchTrainer
from trainables.ray_trainable import train_worker

address, plan_file = sys.argv[1], Path(sys.argv[2])
plan = json.loads(plan_file.read_text())
PIN = plan["pin"]

def pinned_worker(loop_config):
    rank = ray.train.get_context().get_world_rank()
    record = Path(loop_config["run_dir"] + f".rank{rank}.json")
    record.write_text(json.dumps({"rank": rank, "node_id": ray.get_runtime_context().get_node_id()}))
    train_worker(loop_config)

ray.init(address=address, log_to_driver=False)
deadline = time.monotonic() + 120
while len(nodes := [n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)  # the second node registers a few seconds after the head answers
(plan_file.parent / "nodes.json").write_text(json.dumps(
    [{"node_id": n["NodeID"], "resources": n["Resources"]} for n in nodes]))
for run in plan["runs"]:
    TorchTrainer(
        pinned_worker,
        train_loop_config=run["loop_config"],
        scaling_config=ray.train.ScalingConfig(
            num_workers=run["workers"], resources_per_worker={"CPU": 0.5, PIN: 1}
        ),
        run_config=ray.train.RunConfig(name=run["name"], storage_path=plan["train_storage"]),
    ).fit()
ray.shutdown()
"""


@contextlib.contextmanager
def two_node_cluster(logs: Path):
    """Head (1 CPU, dashboard on loopback) + a second node joined with `ray start --address`
    (1 CPU), each holding one PIN. Yields the head's address."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Short: Ray's socket paths under it must stay below the 107-byte Unix limit
    temp_dir = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    port = free_port()
    common = [
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--num-gpus=0",
        f"--resources={json.dumps({PIN: 1})}",
        f"--temp-dir={temp_dir}",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]
    head = [
        ray_bin, "start", "--head", f"--port={port}", *common, *node_ports(),
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
    ]  # fmt: skip
    second = [ray_bin, "start", f"--address=127.0.0.1:{port}", *common, *node_ports()]
    procs: list[subprocess.Popen] = []
    try:
        for name, cmd in (("head", head), ("second", second)):
            log = logs / f"ray_{name}.log"
            with log.open("w") as out:
                proc = subprocess.Popen(
                    cmd, env=cluster_env(), stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            procs.append(proc)
            if name == "head":
                wait_for_port(port, proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):  # second node first
            stop_block_node(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def loop_config(data: dict, workers: int, run_dir: Path) -> dict:
    config = load_config(
        REPO / "configs/smoke.yaml",
        [
            f"training.dataset.dataset_path={data['train_list']}",
            f"validation.dataset_path={data['val_list']}",
            *DDP_SETTINGS,
            f"training.dataloader.batch_size_per_gpu={2 // workers}",
        ],
    )
    return {"config": config_to_dict(config), "trial_id": run_dir.name, "run_dir": str(run_dir)}


def val_psnr(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val/psnr"] for r in rows if "val/psnr" in r]


def test_trial_with_one_worker_per_node_follows_the_one_worker_trial(tmp_path):
    data = generate_dataset(tmp_path / "data", samples=12, size=32, rig="mouse6", seed=9)
    study = tmp_path / "study"  # the one shared storage folder of both nodes
    runs = {w: study / "runs" / f"multinode{w}" for w in (1, 2)}
    for run in runs.values():
        run.parent.mkdir(parents=True, exist_ok=True)
    plan = {
        "pin": PIN,
        "train_storage": str(study / "train"),
        "runs": [
            {"name": f"multinode{w}", "workers": w, "loop_config": loop_config(data, w, runs[w])}
            for w in (1, 2)
        ],
    }
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))

    start = time.monotonic()
    with two_node_cluster(tmp_path) as address:
        up = time.monotonic() - start
        out = subprocess.run(
            [sys.executable, "-c", DRIVER, address, str(plan_file)],
            cwd=REPO,
            env=cluster_env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    print(
        f"head up in {up:.1f} s; 2 nodes joined and both trials done {time.monotonic() - start:.0f} s"
    )

    nodes = json.loads((tmp_path / "nodes.json").read_text())
    assert len(nodes) == 2 and all(n["resources"].get(PIN) == 1 for n in nodes)
    ranks = [json.loads(Path(f"{runs[2]}.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["node_id"] != ranks[1]["node_id"], ranks
    assert {r["node_id"] for r in ranks} == {n["node_id"] for n in nodes}

    single, double = runs[1], runs[2]
    assert len(val_psnr(single)) == 2
    assert val_psnr(double) == pytest.approx(val_psnr(single), abs=0.01)
    a = read_checkpoint(single / "checkpoints" / "ckpt_0000000000000006.pt")["model"]
    b = read_checkpoint(double / "checkpoints" / "ckpt_0000000000000006.pt")["model"]
    start_weights = read_checkpoint(single / "checkpoints" / "ckpt_0000000000000003.pt")["model"]
    moved = max((a[k] - start_weights[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max weight change over steps 3-6: {moved:.2e}; 1 worker vs 2 nodes: {diff:.2e}")
    assert moved > 1e-3  # training moved the weights, so agreeing is not vacuous
    assert diff < 1e-4
    assert all(torch.isfinite(t).all() for t in b.values())
    # Ray Train's reported checkpoints of both trials are in the same shared folder
    assert {p.name for p in (study / "train").iterdir()} >= {"multinode1", "multinode2"}
