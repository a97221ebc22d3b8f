"""Time to load a full-size FaceLift-format checkpoint (d 1024, 24 layers, patch 8) on this machine.

    python benchmarks/checkpoint_load.py [--keep PATH]

Writes a checkpoint with the reference's parameter names and random weights (plus the 32
frozen VGG19 tensors FaceLift stores when its perceptual loss was on), then times
`read_checkpoint` (torch.load, weights_only) and the strict `load_weights` into our model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainables.gslrm.checkpoint import load_weights, read_checkpoint  # noqa: E402
from trainables.gslrm.config import ModelConfig  # noqa: E402
from trainables.gslrm.model import GSLRM, count_parameters  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", help="write the checkpoint here instead of a temp folder")
    args = parser.parse_args()
    model = GSLRM(ModelConfig())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update(
        {
            f"loss_calculator.perceptual_loss_module.net.{i}.weight": torch.zeros(64)
            for i in range(32)
        }
    )
    path = Path(args.keep) if args.keep else Path(tempfile.mkdtemp()) / "ckpt_0000000000021125.pt"
    torch.save({"model": state, "fwdbwd_pass_step": 21125, "param_update_step": 21125}, path)
    size_gb = path.stat().st_size / 1e9

    start = time.perf_counter()
    read_checkpoint(path)
    read_s = time.perf_counter() - start
    fresh = GSLRM(ModelConfig())
    start = time.perf_counter()
    report, _ = load_weights(fresh, path)
    load_s = time.perf_counter() - start
    print(f"parameters {count_parameters(fresh):,}; file {size_gb:.2f} GB")
    print(
        f"torch.load(weights_only=True): {read_s:.1f} s; full strict load_weights: {load_s:.1f} s"
    )
    print(report)


if __name__ == "__main__":
    main()
