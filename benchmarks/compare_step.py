"""Side-by-side training-step speed: a baseline checkout against this one, alternating runs.

    python benchmarks/compare_step.py --baseline ../baseline-checkout --rounds 5 --steps 10
    python benchmarks/compare_step.py --baseline ../baseline-checkout --baseline-threads 2 --threads 1

Each round runs ``benchmarks/train_step.py`` once with the baseline checkout's own venv and once
with this checkout's (the order flips every round, so a slow spell on a shared machine hits both
sides alike), with the same config, the same ``--set`` overrides and the same torch seed: the
script is started through ``runpy`` after ``torch.manual_seed``, so both sides train the same
initial weights on the same batches (train_step.py seeds nothing itself, and the renderer's cost
depends strongly on the initial splat sizes). Threads are fixed per side with
OMP_NUM_THREADS (torch's intra-op pool follows it).

Prints, per round and as medians, the step time train_step.py reports (wall clock, steady state)
and the CPU seconds of the whole child process (user + sys: setup included, but much less
sensitive than wall time to other jobs on the same cores), then the speed-up of this checkout
as the ratio of the median step times and the median of the per-round ratios. ``--json PATH``
also writes every figure (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# Seeds torch's global generator, then runs the checkout's own train_step.py as __main__
CHILD = (
    "import runpy, sys, torch; torch.manual_seed({seed}); "
    "sys.argv = ['benchmarks/train_step.py'] + sys.argv[1:]; "
    "runpy.run_path('benchmarks/train_step.py', run_name='__main__')"
)
STEP_RE = re.compile(r"\(([\d.]+) ms/step")
PART_RE = re.compile(r"^(transformer|renderer) f\+b\s+[\d.]+ % \(([\d.]+) ms\)", re.M)


@dataclass
class RunResult:
    """One train_step.py run: which side, round, figures it printed, CPU of its process."""

    side: str
    round: int
    step_ms: float
    transformer_ms: float
    renderer_ms: float
    cpu_s: float
    wall_s: float


def python_of(checkout: Path) -> Path:
    """The checkout's own venv interpreter (its editable install imports that checkout)."""
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(
            f"{python} not found: run `bash scripts/setup.sh` in {checkout} first"
        )
    return python


def parse_output(text: str) -> tuple[float, float, float]:
    """train_step.py's stdout -> (ms/step, transformer f+b ms, renderer f+b ms)."""
    step = STEP_RE.search(text)
    if step is None:
        raise ValueError(f"no 'ms/step' figure in train_step.py output:\n{text[-2000:]}")
    parts = {name: float(ms) for name, ms in PART_RE.findall(text)}
    return (
        float(step.group(1)),
        parts.get("transformer", float("nan")),
        parts.get("renderer", float("nan")),
    )


def run_once(
    side: str, checkout: Path, args: argparse.Namespace, threads: int | None, round_: int
) -> RunResult:
    """Run the checkout's train_step.py once; raises with its output if it fails."""
    cmd = [str(python_of(checkout)), "-c", CHILD.format(seed=args.seed)]
    cmd += ["--config", args.config, "--steps", str(args.steps)]
    cmd += ["--warmup-steps", str(args.warmup_steps)]
    for item in args.set:
        cmd += ["--set", item]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{side} train_step.py failed (exit {proc.returncode}) in {checkout}:\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    step_ms, transformer_ms, renderer_ms = parse_output(proc.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return RunResult(side, round_, step_ms, transformer_ms, renderer_ms, cpu, wall)


def summarise(results: list[RunResult]) -> dict[str, float]:
    """Medians per side and the speed-up of 'new' over 'baseline' (> 1 = new is faster)."""
    out: dict[str, float] = {}
    for side in ("baseline", "new"):
        mine = [r for r in results if r.side == side]
        for field in ("step_ms", "transformer_ms", "renderer_ms", "cpu_s"):
            out[f"{side}_{field}"] = statistics.median(getattr(r, field) for r in mine)
    out["speedup_median_step"] = out["baseline_step_ms"] / out["new_step_ms"]
    by_round = {}
    for r in results:
        by_round.setdefault(r.round, {})[r.side] = r.step_ms
    ratios = [v["baseline"] / v["new"] for v in by_round.values() if len(v) == 2]
    out["speedup_median_of_rounds"] = statistics.median(ratios)
    out["speedup_cpu_s"] = out["baseline_cpu_s"] / out["new_cpu_s"]
    return out


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp_{path.name}")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="baseline checkout")
    parser.add_argument("--new", type=Path, default=HERE, help="checkout to compare (this one)")
    parser.add_argument("--config", default="configs/smoke.yaml", help="relative to each checkout")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS, both sides")
    parser.add_argument("--baseline-threads", type=int, default=None, help="overrides --threads")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures here")
    args = parser.parse_args(argv)
    baseline = args.baseline.resolve()
    base_threads = args.baseline_threads if args.baseline_threads is not None else args.threads
    new = args.new.resolve()
    sides = {"baseline": (baseline, base_threads), "new": (new, args.threads)}

    results: list[RunResult] = []
    print(f"baseline {baseline} (threads {base_threads}); new {new} (threads {args.threads})")
    print(f"{'round':>5} {'side':>8} {'ms/step':>9} {'transf ms':>9} {'render ms':>9} {'cpu s':>7}")
    for round_ in range(args.rounds):
        order = ("baseline", "new") if round_ % 2 == 0 else ("new", "baseline")
        for side in order:
            checkout, threads = sides[side]
            r = run_once(side, checkout, args, threads, round_)
            results.append(r)
            print(
                f"{round_:>5} {side:>8} {r.step_ms:9.1f} {r.transformer_ms:9.1f} "
                f"{r.renderer_ms:9.1f} {r.cpu_s:7.1f}",
                flush=True,
            )
    summary = summarise(results)
    for side in ("baseline", "new"):
        print(
            f"median {side:>8} {summary[f'{side}_step_ms']:9.1f} "
            f"{summary[f'{side}_transformer_ms']:9.1f} {summary[f'{side}_renderer_ms']:9.1f} "
            f"{summary[f'{side}_cpu_s']:7.1f}"
        )
    print(
        f"speed-up (baseline / new): median step {summary['speedup_median_step']:.2f}x, "
        f"median of rounds {summary['speedup_median_of_rounds']:.2f}x, "
        f"process CPU {summary['speedup_cpu_s']:.2f}x"
    )
    if args.json is not None:
        write_json_atomic(
            args.json,
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "summary": summary,
                "runs": [asdict(r) for r in results],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
