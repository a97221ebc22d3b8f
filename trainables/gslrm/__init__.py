"""The GS-LRM trainer for mice on a fixed rig, runnable alone (`python -m trainables.gslrm.train`).

config (YAML <-> dataclasses, FaceLift keys), data (reader, datasets, synthetic generator,
checker), model (transformer -> pixel-aligned Gaussians), render (gsplat on CUDA, a PyTorch
reference on CPU), losses and metrics, checkpoint (FaceLift-compatible files), visualize
(validation pictures), train (the loop), plus two standard-library helpers used outside the
trainer too: atomic (atomic file writes) and rig (camera look-at geometry). Knows nothing of
Ray or Optuna.
"""
