#!/usr/bin/env bash
# The first GPU check of mouse-gslrm-study, in one call of under 9 minutes.
#
# The GPU machine (H200 now: CPython 3.12, torch 2.11 + CUDA 13) has no Ray, Optuna, gsplat or
# pytorch-msssim and no package registry, so they travel in one archive. Once, on a machine with
# the registry (repo root; .device/ is git-ignored):
#     ../shared/device/make-bundle.sh .device/site.tar.xz      # Ray 2.60, Optuna 5, gsplat 1.5.3 (sm_90) ...
#     (extra wheels, if any, go in .device/wheels/: they are unpacked too)
# Then, on the GPU machine, from the repo root with .device/ travelling along (limit ~580 s):
#     bash benchmarks/device_check.sh
# Steps: a) unpack + versions, b) pytest -m gpu, c) torch vs gsplat render agreement at 64 px
# (the smoke model's output) and at 256 px with the GPU config's Gaussian count, d)
# benchmarks/train_step.py at the GPU config, e) a 2-trial study through Ray Tune + Train with
# --gpus-per-trial 1. Every step's timeout is cut to what is left of BUDGET_S, so the whole call
# ends in time even when gsplat has to JIT-compile itself; the log comes back even if cut.
# Writes $OUT/{device_check.log,summary.txt,render_agreement.json,study.tar.gz}.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; LOG=$OUT/device_check.log
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS=0
export MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0   # only used if gsplat has to JIT-compile itself
BUDGET_S=${BUDGET_S:-510}   # 8.5 min: the steps below never run past it
T0=$SECONDS; say(){ echo; echo "=== [$((SECONDS-T0))s] $*"; }
# cap WANT: WANT seconds, or what is left of the budget (minus 10 s for the summary) if less
cap(){ local rest=$((BUDGET_S - (SECONDS - T0) - 10)); [ "$rest" -lt "$1" ] && echo "$rest" || echo "$1"; }
# run_step WANT CMD...: run CMD under timeout, or skip it (and say so) with under 15 s left
run_step(){ local t; t=$(cap "$1"); shift
  if [ "$t" -lt 15 ]; then echo "SKIPPED (budget spent): $*"; return 124; fi
  timeout "$t" "$@"; }

say "a) unpack the bundle"
[ -f .device/site.tar.xz ] || echo "FAIL bundle missing: build .device/site.tar.xz first (see the header)"
mkdir -p /tmp/site && tar -xJf .device/site.tar.xz -C /tmp/site || echo "FAIL bundle unpack"
for w in .device/wheels/*.whl; do [ -f "$w" ] && python3 -m zipfile -e "$w" /tmp/site; done
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; df -h /dev/shm | tail -1
python3 - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "cc", torch.cuda.get_device_capability(0))
for m in ("gsplat.csrc", "ray", "optuna", "pytorch_msssim", "ray.dashboard.optional_deps", "tensorboardX", "wandb"):
    try:
        mod = importlib.import_module(m); print("ok     ", m, getattr(mod, "__version__", ""))
    except Exception as e:
        print("MISSING", m, "->", repr(e)[:160])
PY
python3 -c "import torch, gsplat.csrc" 2>/dev/null || { say "gsplat prebuilt .so unusable: JIT build"; run_step 240 python3 -c "from gsplat.cuda._backend import _C; print('gsplat JIT ok', _C)"; }

say "b) pytest -m gpu (tests/test_render.py: agreement at batch 2, all five gradients, 10x the float32 noise)"
run_step 90 python3 -m pytest -m gpu -q -rA -s -p no:cacheprovider --continue-on-collection-errors tests
echo "pytest rc=$?"

say "c) torch vs gsplat render agreement (realistic sizes)"
cat > /tmp/render_agreement.py <<'PY'
import json, sys, time
import numpy as np, torch
sys.path.insert(0, ".")
from tests.test_render import GAUSSIAN_FIELDS, compare_runs, random_scene, render_run
from trainables.gslrm.config import load_config
from trainables.gslrm.data.synthetic import make_rig
from trainables.gslrm.model import GSLRM
from trainables.gslrm.types import Cameras, Gaussians

def timed(*args, **kw):
    render_run(*args, **kw)  # warm-up
    torch.cuda.synchronize(); t0 = time.perf_counter()
    run = render_run(*args, **kw)
    torch.cuda.synchronize()
    return run, round(1e3 * (time.perf_counter() - t0), 1)

def compare(name, g, c, bg, size, ref, test, reference64=None):
    """ref/test: (backend, device). Pass: few flipped pixels (a Gaussian's alpha on 1/255), the
    other pixels within 1e-5, gradients within 1e-2 relative L2, or, with a float64 reference,
    within 10x the float32 noise measured on the scene (the rule of tests/test_render.py)."""
    (r, ms_r), (s, ms_s) = timed(g, c, bg, size, *ref), timed(g, c, bg, size, *test)
    got = compare_runs(s, r)
    out = {"case": name, "BxV": list(c.c2w.shape[:2]), "size": size, "N": g.means.shape[1],
           "ms_%s_%s" % ref: ms_r, "ms_%s_%s" % test: ms_s, "vs_ref": got,
           "nan": bool(s.rgb.isnan().any() or s.alpha.isnan().any())}
    pixels = c.c2w.shape[0] * c.c2w.shape[1] * size * size
    ok = not out["nan"] and got["flipped_pixels"] <= max(4, 1e-4 * pixels)
    if reference64 is not None:
        noise = compare_runs(r, render_run(g, c, bg, size, *reference64, dtype=torch.float64))
        out["ref_f32_vs_f64"] = noise
        for k in ("rgb_noise", "alpha_noise", *("grad_" + n for n in GAUSSIAN_FIELDS)):
            ok &= got[k] < 10 * max(noise[k], 1e-4 if k.startswith("grad_") else 1e-8)
    else:
        ok &= got["rgb_noise"] < 1e-5 and got["alpha_noise"] < 1e-5
        ok &= all(got["grad_" + n] < 1e-2 for n in GAUSSIAN_FIELDS)
    out["pass"] = bool(ok)
    print(("PASS " if ok else "FAIL ") + json.dumps(out), flush=True)
    return out

res = []
# 1. what a CPU study renders: GSLRM at the smoke config (64 px, 1/4 of the pixels), random init, B=2
cfg = load_config("configs/smoke.yaml"); size = cfg.model.image_tokenizer.image_size
torch.manual_seed(0); model = GSLRM(cfg.model).eval()
rig = make_rig("mouse6", size)
c2w = torch.tensor(np.stack([np.linalg.inv(k.w2c) for k in rig]), dtype=torch.float32)[None].repeat(2, 1, 1, 1)
intr = torch.tensor([[k.fx, k.fy, k.cx, k.cy] for k in rig], dtype=torch.float32)[None].repeat(2, 1, 1)
with torch.no_grad():
    g = model(torch.rand(2, 5, 3, size, size), Cameras(c2w[:, :5], intr[:, :5]))
bg = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.8]])
res.append(compare("model_smoke_64px", g, Cameras(c2w, intr), bg, size, ("torch", "cpu"), ("gsplat", "cuda"), ("torch", "cpu")))
# 2. the GPU config's render size: B=2, 6 views of 256 px, N = 5*256^2+2 Gaussians of a few px
n, size = 5 * 256 * 256 + 2, 256
parts = [random_scene(n, 6, size, seed=s, scale_range=(0.005, 0.03)) for s in (3, 4)]
g = Gaussians(*(torch.cat([getattr(p[0], f) for p in parts]) for f in GAUSSIAN_FIELDS))
c = Cameras(torch.cat([p[1].c2w for p in parts]), torch.cat([p[1].intrinsics for p in parts]))
res.append(compare("big_256px", g, c, bg, size, ("torch", "cuda"), ("gsplat", "cuda")))
print("peak GPU memory %.1f GiB" % (torch.cuda.max_memory_allocated() / 2**30))
json.dump(res, open(sys.argv[1], "w"), indent=1)
sys.exit(0 if all(r["pass"] for r in res) else 1)
PY
run_step 110 python3 /tmp/render_agreement.py "$OUT/render_agreement.json"
echo "render rc=$?"

say "d) benchmarks/train_step.py, GPU config of docs/benchmarks.md, 60 steps"
run_step 130 python3 benchmarks/train_step.py --config configs/mouse_gslrm.yaml --steps 60 \
  --set model.transformer.d=768 --set model.transformer.n_layer=12 --set training.runtime.grad_checkpoint_every=0
echo "train_step rc=$?"

say "e) 2-trial study through Ray Tune + Train, --gpus-per-trial 1, 300 steps each"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader -l 3 > /tmp/gpu_apps.txt 2>&1 & SMI=$!
A="view_order_ablation --smoke --seeds 0 --gpus-per-trial 1 --max-concurrent 1 --wandb disabled --storage /tmp/gs
   --set training.schedule.max_steps=300 --set validation.val_every=100 --set training.checkpointing.checkpoint_every=100"
if python3 -c "import ray.dashboard.optional_deps" 2>/dev/null; then
  run_step 170 python3 -m study.run $A; echo "study rc=$?"
else
  echo "KIT: Ray dashboard deps missing (see MISSING above): study.run's ray.init(include_dashboard=True) would raise"
  echo "KIT: running it with the dashboard off instead (a FIFO grid stops no trial early, so the"
  echo "KIT: no-dashboard cleanup hang of RAY_NOTES.md cannot occur)"
  run_step 170 python3 - $A <<'PY'
import sys, ray
_init = ray.init
def init(*a, **k):
    k["include_dashboard"] = False
    return _init(*a, **k)
ray.init = init
from study.run import main
sys.exit(main(sys.argv[1:]))
PY
  echo "study (dashboard off) rc=$?"
fi
kill $SMI 2>/dev/null
echo "GPU processes seen during the study (samples pid name):"; cut -d, -f1,2 /tmp/gpu_apps.txt | sort | uniq -c
python3 - <<'PY'
import glob, json, statistics as st
d = "/tmp/gs/view_order_ablation"
for f in sorted(glob.glob(d + "/tune-*/*/trial_summary.json")):
    s = json.load(open(f))
    print("trial", s["trial_id"], s["status"], "steps", s["steps_run"], "wall %.0fs" % s["wall_s"], "restarts", s["restarts"], s["error"] or "")
for f in sorted(glob.glob(d + "/runs/*/metrics.jsonl")):
    rows = [json.loads(l) for l in open(f)]
    it = [r["metrics/iter_time"] for r in rows if "metrics/iter_time" in r][1:]
    v = [r for r in rows if "val/psnr_fg" in r]
    print("run", f.split("/")[-2], "steps/s(median) %.1f" % (1 / st.median(it)) if it else "no steps",
          {k: round(x, 3) for k, x in (v[-1] if v else {}).items() if k.startswith("val/")})
PY
tar -czf "$OUT/study.tar.gz" -C /tmp/gs --exclude='*.pt' view_order_ablation 2>/dev/null

say "summary (budget ${BUDGET_S}s, used $((SECONDS-T0))s)"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
grep -aE "^(ok|MISSING|PASS|FAIL|KIT:|SKIPPED|trial|run) |torch32 vs|gsplat vs|passed|failed|rc=|steps/s|samples/s|MFU|f\+b|peak GPU|data wait|parameters|Error|error:" "$LOG" \
  | grep -v "^===" | cut -c1-900 > "$OUT/summary.txt"; cat "$OUT/summary.txt"
sleep 2  # let tee flush the log
