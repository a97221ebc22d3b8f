"""The same training steps through the plain loop and through a Tune trial running TorchTrainer.

    python benchmarks/ray_overhead.py --steps 60                       # CPU, smoke config
    python benchmarks/ray_overhead.py --config configs/mouse_gslrm.yaml --steps 300   # GPU

Prints, for both paths: time from launch to the first finished training step, steady-state
steps/s (between the first and the last logged step) and total wall time, then the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainables.gslrm.config import load_config, parse_override  # noqa: E402
from trainables.gslrm.data.synthetic import generate_dataset  # noqa: E402
from trainables.gslrm.train import train  # noqa: E402
from trainables.journal import read_json_lines  # noqa: E402
from trainables.ray_trainable import TrialSettings, run_trial  # noqa: E402


def timing(metrics_file: Path, launched: float) -> dict[str, float]:
    rows = read_json_lines(metrics_file)  # the one tolerant reader of the log
    times = [(r["step"], r["metrics/time"]) for r in rows if "metrics/time" in r]
    (first_step, first_t), (last_step, last_t) = times[0], times[-1]
    return {
        "first_step_s": first_t - launched,
        "steps_per_s": (last_step - first_step) / (last_t - first_t),
        "wall_s": last_t - launched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs the Train worker reserves (Ray sets its torch threads to match)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ray_overhead_"))
    base = load_config(args.config, args.set)
    info = generate_dataset(
        work / "data", samples=16, size=base.model.image_tokenizer.image_size, seed=0
    )
    overrides = {
        "training.dataset.dataset_path": info["train_list"],
        "validation.dataset_path": info["val_list"],
        "training.schedule.max_steps": args.steps,
        "validation.val_every": args.steps,
        "training.checkpointing.checkpoint_every": args.steps,
        "training.logging.wandb.log_every": 1,
        "training.logging.wandb.mode": "disabled",
    }
    config = load_config(args.config, [*args.set, *(f"{k}={v}" for k, v in overrides.items())])

    launched = time.time()
    train(config, work / "plain")
    plain = timing(work / "plain" / "metrics.jsonl", launched)

    os.environ.update(RAY_USAGE_STATS_ENABLED="0", WANDB_MODE="disabled")
    import ray
    from ray import tune

    use_gpu = bool(__import__("torch").cuda.is_available())
    ray.init(
        address="local",  # a cluster of its own, never one another job on this machine started
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        resources={"trial_slot": 1},
        log_to_driver=False,
    )
    settings = TrialSettings(
        study="overhead",
        study_dir=str(work / "study"),
        tune_dir=str(work / "study" / "tune"),
        base_config=str(Path(args.config).resolve()),
        overrides={**dict(parse_override(s) for s in args.set), **overrides},
        use_gpu=use_gpu,
        gpus_per_worker=1.0 if use_gpu else 0.0,
        cpus_per_worker=args.cpus_per_worker,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, settings=settings), {"trial_slot": 1, "CPU": 0}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name="tune", storage_path=str(work / "study"), verbose=0),
    )
    launched = time.time()
    tuner.fit()
    (metrics_file,) = (work / "study" / "runs").glob("*/metrics.jsonl")
    through_ray = timing(metrics_file, launched)
    ray.shutdown()

    print(
        f"config: {args.config} {' '.join(args.set)}; {args.steps} steps; device {'cuda' if use_gpu else 'cpu'}"
    )
    print(f"{'path':<22}{'to first step (s)':>20}{'steps/s':>10}{'wall (s)':>10}")
    for name, t in (("plain loop", plain), ("Tune + TorchTrainer", through_ray)):
        print(f"{name:<22}{t['first_step_s']:>20.1f}{t['steps_per_s']:>10.2f}{t['wall_s']:>10.1f}")
    print(
        f"steady-state throughput ratio (Ray / plain): {through_ray['steps_per_s'] / plain['steps_per_s']:.3f}"
    )
    print(
        f"wall-time ratio (Ray / plain): {through_ray['wall_s'] / plain['wall_s']:.2f}; "
        f"extra start-up through Ray: {through_ray['first_step_s'] - plain['first_step_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
