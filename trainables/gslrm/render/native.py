"""The torch backend's fused CPU compositing kernel (``composite.cpp``), built on first use.

Why native code: compositing is ~60 % of a CPU training step in the pure-PyTorch path, and it
is memory-bound there (~40 passes over [tiles, pixels, entries] tensors); a loop that keeps
each pixel's transmittance in a register walks every (pixel, entry) pair once forward and
twice backward.

Why ctypes and not a torch C++ extension: the source needs no torch headers, so ``g++``
builds it in about a second on a fresh machine (a torch extension takes a minute), and the
shared object loads into any torch version. It is cached per source hash and machine under
``$GSLRM_NATIVE_CACHE`` (default ``~/.cache/mouse-gslrm/native``), written atomically, so
concurrent Ray workers share one build.

``load()`` returns None, after one warning naming the compiler's complaint, when the kernel
cannot be built (no ``g++``/``$CXX``); the caller then falls back to the pure-PyTorch path,
which gives the same images to float tolerance. ``GSLRM_COMPOSITE_KERNEL=torch`` forces the
pure-PyTorch path; ``native`` makes a failed build an error instead of a warning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("composite.cpp")
KERNELS = ("auto", "native", "torch")
MAX_TILE_SIZE = 16  # composite.cpp keeps a tile's pixels in arrays of kMaxPixels = 256
ABI = 3
_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


class NativeBuildError(RuntimeError):
    """The compositing kernel could not be compiled or loaded."""


def kernel_choice() -> str:
    """The compositing kernel asked for by ``GSLRM_COMPOSITE_KERNEL`` (default auto)."""
    choice = os.environ.get("GSLRM_COMPOSITE_KERNEL", "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise ValueError(
            f"GSLRM_COMPOSITE_KERNEL={choice!r} is not a compositing kernel; "
            f"valid: {', '.join(KERNELS)}"
        )
    return choice


def cache_dir() -> Path:
    """Where built kernels live: ``$GSLRM_NATIVE_CACHE`` or ``~/.cache/mouse-gslrm/native``."""
    configured = os.environ.get("GSLRM_NATIVE_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "mouse-gslrm" / "native"


def _cpu_signature() -> str:
    """What the build is tuned for (-march=native): the CPU's feature flags where Linux lists
    them, else the processor name. Part of the cache key, so a home directory shared by
    different nodes never hands one node a library built for another's instruction set."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _library_path(source: bytes, compiler: str) -> Path:
    key = source + compiler.encode() + _cpu_signature().encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    return cache_dir() / f"composite-{digest}-{platform.machine()}.so"


def _compile(
    compiler: str, source_path: Path, out: str, tuned: bool
) -> subprocess.CompletedProcess:
    # -O3 without -ffast-math: the kernel's skip and stop tests must follow IEEE rules;
    # -fno-trapping-math (nothing here reads FP exception flags) lets the pixel loops vectorise;
    # -march=native widens them to the CPU's vectors (AVX-512 here: 1.3x forward, 1.6x backward)
    command = [compiler, "-O3", "-fno-trapping-math", "-std=c++17", "-shared", "-fPIC"]
    command += ["-pthread", *(["-march=native"] if tuned else []), str(source_path), "-o", out]
    return subprocess.run(command, capture_output=True, text=True)


def build(source_path: Path = SOURCE) -> Path:
    """Compile ``source_path`` into the cache unless an up-to-date build is there; its path.

    Raises NativeBuildError naming the compiler and its error output.
    """
    compiler = os.environ.get("CXX", "g++")
    source = source_path.read_bytes()
    target = _library_path(source, compiler)
    if target.exists():
        return target
    if shutil.which(compiler) is None:
        raise NativeBuildError(
            f"no C++ compiler {compiler!r} on PATH to build {source_path.name} "
            "(install g++ or set CXX)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        done = _compile(compiler, source_path, tmp, tuned=True)
        if done.returncode != 0:  # a compiler without -march=native
            done = _compile(compiler, source_path, tmp, tuned=False)
        if done.returncode != 0:
            raise NativeBuildError(
                f"{' '.join(done.args)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
            )
        os.replace(tmp, target)  # atomic: concurrent workers see a whole file or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    if lib.gslrm_composite_abi() != ABI:
        raise NativeBuildError(f"{lib._name} has ABI {lib.gslrm_composite_abi()}, expected {ABI}")
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"gslrm_composite_forward_{suffix}")
        fwd.argtypes = [_ptr] * 5 + [_i64] * 5 + [_ptr, _i64]
        fwd.restype = None
        bwd = getattr(lib, f"gslrm_composite_backward_{suffix}")
        bwd.argtypes = [_ptr] * 5 + [_i64] * 5 + [_ptr, _ptr, _i64]
        bwd.restype = None
    return lib


@functools.cache
def _load_cached() -> ctypes.CDLL | None:
    try:
        return _bind(ctypes.CDLL(str(build())))
    except (NativeBuildError, OSError) as err:
        if kernel_choice() == "native":
            raise NativeBuildError(f"GSLRM_COMPOSITE_KERNEL=native but {err}") from err
        warnings.warn(
            f"native compositing kernel unavailable, using the slower pure-PyTorch path: {err}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def load() -> ctypes.CDLL | None:
    """The bound kernel library, or None (after one warning) if it cannot be built."""
    if kernel_choice() == "torch":
        return None
    return _load_cached()


def _run(lib: ctypes.CDLL, direction: str, bins: tuple, grid: tuple, *buffers: torch.Tensor):
    """Call the kernel's forward or backward: bins = (table, ids, tile_ids, starts, counts)
    contiguous, buffers = its output (forward) or (grad_canvas, grad_table) (backward)."""
    table, _, tile_ids, _, _ = bins
    _, tiles_x, tiles_y, tile_size = grid
    suffix = "f64" if table.dtype == torch.float64 else "f32"
    getattr(lib, f"gslrm_composite_{direction}_{suffix}")(
        *(t.data_ptr() for t in bins),
        tile_ids.numel(),
        tiles_x,
        tiles_y,
        tile_size,
        table.shape[0],
        *(t.data_ptr() for t in buffers),
        torch.get_num_threads(),
    )


class NativeComposite(torch.autograd.Function):
    """Front-to-back compositing of every non-empty tile by the native kernel.

    forward(table [M, 9], ids [E], tile_ids [T], starts [T], counts [T], grid, lib)
    -> canvas [n_tiles_total, P, 4]: colour and alpha per tile pixel, zero on empty tiles.
    table rows are (mean x, mean y, conic a, b, c, opacity, r, g, b), float32 or float64;
    the index tensors are ``TileBins``' (int64); grid is (n_tiles_total, tiles_x, tiles_y,
    tile_size), P = tile_size^2; lib is ``load()``'s library.
    """

    @staticmethod
    def forward(ctx, table, ids, tile_ids, starts, counts, grid, lib):
        table = table.detach().contiguous()
        bins = (table,) + tuple(
            t.to(torch.int64).contiguous() for t in (ids, tile_ids, starts, counts)
        )
        n_tiles_total, _, _, tile_size = grid
        canvas = table.new_zeros(n_tiles_total, tile_size * tile_size, 4)
        _run(lib, "forward", bins, grid, canvas)
        ctx.save_for_backward(*bins)
        ctx.grid, ctx.lib = grid, lib
        return canvas

    @staticmethod
    def backward(ctx, grad_canvas):
        bins = ctx.saved_tensors
        grad_table = torch.zeros_like(bins[0])
        grad_canvas = grad_canvas.to(grad_table.dtype).contiguous()
        _run(ctx.lib, "backward", bins, ctx.grid, grad_canvas, grad_table)
        return (grad_table,) + (None,) * 6
