"""Evaluate one run (or one checkpoint) outside a study, with the study's protocol.

    python -m analysis.evaluate RUN_DIR [--checkpoint PATH] [--dataset LIST] [--config CFG]
                                [--rule best|last] [--out DIR] [--device cpu|cuda]

Writes RUN_DIR/eval/items.parquet and protocol.json (see trainables/gslrm/evaluate.py) and
prints one line per view role with the mean of each metric. The evaluator (torch) is imported
inside main(): importing the analysis package never loads torch or Ray.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis.paired import COMPARED_METRICS as SUMMARY_METRICS  # the printed means


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.evaluate",
        description="Render every item x every target view of a run's chosen checkpoint and "
        "write RUN_DIR/eval/items.parquet and RUN_DIR/eval/protocol.json.",
    )
    parser.add_argument(
        "run_dir", type=Path, help="trainer run folder (config.yaml, metrics.jsonl, checkpoints/)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="evaluate this checkpoint file instead of the one the rule picks (rule recorded "
        "as 'file')",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        help="FaceLift list file of the items (default: evaluation.dataset_path, else "
        "data_test.txt beside the training list, else the validation list)",
    )
    parser.add_argument("--config", type=Path, help="trainer YAML (default: RUN_DIR/config.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. evaluation.batch_size=8",
    )
    parser.add_argument(
        "--rule", choices=("best", "last"), help="checkpoint rule (default: evaluation.checkpoint)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/eval)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    return parser


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import pyarrow.parquet as pq

    from trainables.gslrm.config import ConfigError, load_config
    from trainables.gslrm.evaluate import EvaluationError, evaluate_run

    overrides = list(args.set)
    if args.rule:
        overrides.append(f"evaluation.checkpoint={args.rule}")
    try:
        if not args.run_dir.is_dir():
            raise EvaluationError(f"{args.run_dir}: no such run folder")
        config_path = args.config or args.run_dir / "config.yaml"
        if not config_path.is_file():
            raise EvaluationError(
                f"{config_path}: not found; pass --config CFG for a run without config.yaml"
            )
        config = load_config(config_path, overrides)
        result = evaluate_run(
            args.run_dir,
            config,
            dataset_path=args.dataset,
            checkpoint=args.checkpoint,
            device=args.device,
            out_dir=args.out,
        )
    except (ConfigError, EvaluationError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    protocol = result.protocol
    print(
        f"evaluated {protocol['n_items']} items x views = {result.rows} rows "
        f"({protocol['split']} split, checkpoint {protocol['checkpoint_rule']} at step "
        f"{protocol['checkpoint_step']}) in {result.seconds:.1f} s "
        f"({protocol['items_per_s']} items/s rendering)"
    )
    table = pq.read_table(result.items_path).to_pydict()
    for role in ("input", "novel"):
        rows = [i for i, r in enumerate(table["role"]) if r == role]
        if not rows:
            continue
        means = ", ".join(
            f"{name} {_mean([table[name][i] for i in rows]):.3f}" for name in SUMMARY_METRICS
        )
        print(f"{role} views ({len(rows)} rows): {means}")
    print(result.items_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
