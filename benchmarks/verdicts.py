"""Speed and calibration of the verdict engine (analysis/verdicts.py).

    python benchmarks/verdicts.py                  # ms per paired_verdict, 10 seeds x 360 x 6
    python benchmarks/verdicts.py --calibration    # the simulation table of the module docstring

The speed figure is the median of --repeats calls on one tidy frame of 21,600 item views (the
reference fork's test set: 360 frames x 6 views, at 10 seeds); the target is under 50 ms.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.calibration import DESIGNS, calibrate  # noqa: E402
from analysis.verdicts import paired_verdict  # noqa: E402


def tidy_frame(seeds: int, items: int, views: int, rng: np.random.Generator) -> pd.DataFrame:
    d = rng.normal(0.3, 1.0, (seeds, items, views)) + rng.normal(0, 0.5, (seeds, 1, 1))
    s, i, v = np.meshgrid(range(seeds), range(items), range(views), indexing="ij")
    return pd.DataFrame(
        {
            "seed": s.ravel(),
            "item_id": [f"test_{k:06d}" for k in i.ravel()],
            "camera": v.ravel(),
            "psnr_fg": d.ravel(),
        }
    )


def speed(seeds: int, items: int, views: int, repeats: int) -> list[float]:
    frame = tidy_frame(seeds, items, views, np.random.default_rng(0))
    paired_verdict(frame, "psnr_fg", 0.5)  # warm-up: imports, scipy's first calls
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        paired_verdict(frame, "psnr_fg", 0.5)
        times.append(time.perf_counter() - start)
    return times


def calibration_table(reps: int) -> str:
    rng = np.random.default_rng(22)
    lines = [
        "| design | seed sd / item sd (dB) | seeds | coverage | false better | false worse "
        "| TOST size | power at +1 dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for design, (seed_sd, item_sd), seeds in itertools.product(
        DESIGNS, ((0.0, 1.0), (0.5, 1.0), (1.0, 1.0)), (2, 3, 5, 10)
    ):
        c = calibrate(rng, reps, seeds, seed_sd, item_sd, design)
        lines.append(
            f"| {design} | {seed_sd:g} / {item_sd:g} | {seeds} | {c.coverage:.3f} | "
            f"{c.false_better:.3f} | {c.false_worse:.3f} | {c.tost_size:.3f} | "
            f"{c.power_at_1:.3f} |"
        )
    se = (0.05 * 0.95 / reps) ** 0.5
    lines.append(f"\n{reps} studies per cell; Monte Carlo se of a rate near 0.05 or 0.95: {se:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--items", type=int, default=360)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calibration", action="store_true")
    parser.add_argument("--reps", type=int, default=4000, help="studies per calibration cell")
    args = parser.parse_args(argv)
    if args.calibration:
        print(calibration_table(args.reps))
        return 0
    times = speed(args.seeds, args.items, args.views, args.repeats)
    rows = args.seeds * args.items * args.views
    print(
        f"paired_verdict on {args.seeds} seeds x {args.items} items x {args.views} views "
        f"({rows} rows): median {1000 * statistics.median(times):.1f} ms, "
        f"min {1000 * min(times):.1f} ms over {args.repeats} calls"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
