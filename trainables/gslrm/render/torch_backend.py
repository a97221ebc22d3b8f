"""Pure-PyTorch differentiable Gaussian rasteriser following gsplat 1.5.3 "classic" rules.

This is the CPU path: every CPU training step and every test renders through it, so it must
agree with gsplat's `rasterization` and be fast on two cores.

Pipeline
1. ``project``: world -> camera -> pixel means, EWA 2D covariances, conics, radii (autograd).
2. ``bin_gaussians``: list, per small square tile, the Gaussians whose box can reach it, front
   to back (no grad; integer bookkeeping only).
3. ``composite_tiles``: front-to-back alpha compositing per tile, by one of two kernels with
   hand-written backwards. ``native`` (the default on CPU, ``native.py`` / ``composite.cpp``,
   compiled on first use): one walk per tile list, pixels side by side, ~2.7x faster.
   ``torch`` (the fallback without a C++ compiler, or ``GSLRM_COMPOSITE_KERNEL=torch``):
   tiles with similar list lengths are padded together into blocks and composited CHUNK
   list entries at a time, as [tiles, pixels, entries] tensors with a cumulative product
   along the entries. Tiles whose pixels have all stopped leave early, like gsplat's.

Why per-tile lists give exactly gsplat's pixels: a pixel outside a Gaussian's opacity-aware box
(extent ``min(3.33, sqrt(2 ln(255 opacity)))`` standard deviations per axis) always has
``alpha < 1/255``, so the tile size only changes the work done, never the image.

The torch kernel's one deliberate deviation: sigma is evaluated as a quadratic expanded around
each tile's centre (one matrix product for all pixels), which differs from gsplat's direct form
by ~1e-5 in sigma; see ``_chunk_alpha``. The native kernel uses the direct form.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from . import native

EPS2D = 0.3
FAR_PLANE = 1e10
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4
EXTEND = 3.33
# Small tiles waste little work on pixels a splat's box barely reaches (measured: 4 px beats
# 8 px and 16 px on 2 CPU cores for splats a few pixels wide); the image does not depend on it
TILE_SIZE = 4
# List entries composited per step; a tile stops once all its pixels have T <= 1e-4
CHUNK = 64
# Caps per block of tiles: [tiles, pixels, CHUNK] temporaries (16 MB each) and padded
# [tiles, K] per-Gaussian rows
BLOCK_ELEMENTS = 1 << 22
BLOCK_ROWS = 1 << 19
# Tiles join a block only while their list is at least this fraction of its longest
BLOCK_FILL = 0.6
# Up to this many [tile, pixel, entry] elements per render, forward keeps alpha and survival
# for backward (2 float tensors, ~270 MB at the limit); beyond it backward recomputes them
SAVED_ELEMENTS = 1 << 25


@dataclass
class Projection:
    """Per-image screen-space Gaussians, I images of N Gaussians.

    means2d: [I, N, 2] pixel coordinates (u, v)
    cov2d: [I, N, 3] blurred 2D covariance (xx, xy, yy)
    conics: [I, N, 3] inverse of cov2d (a, b, c)
    depths: [I, N] camera-space z
    radii: [I, N, 2] int32 box half-sizes in pixels; 0 where culled
    """

    means2d: torch.Tensor
    cov2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor


@dataclass
class TileBins:
    """Gaussian lists of the non-empty tiles.

    gaussian_ids: [M] flat indices into I * N, grouped by tile, front to back within a tile
    tile_ids: [T] flat tile index (image, tile row, tile column) of each non-empty tile
    starts: [T] offset of each tile's list in gaussian_ids
    counts: [T] list length of each tile
    """

    gaussian_ids: torch.Tensor
    tile_ids: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """quats: [..., 4] (w, x, y, z), any norm -> [..., 3, 3] rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, -1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """quats: [..., 4], scales: [..., 3] -> [..., 3, 3] covariance R diag(s^2) R^T."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project(
    means: torch.Tensor,
    covars: torch.Tensor,
    w2c: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float = FAR_PLANE,
    eps2d: float = EPS2D,
) -> Projection:
    """EWA-project Gaussians into I pinhole images (gsplat's fully fused projection).

    means: [I, N, 3] world, covars: [I, N, 3, 3] world, w2c: [I, 4, 4], Ks: [I, 3, 3].
    """
    rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
    means_c = means @ rot.transpose(-1, -2) + trans[:, None]
    covars_c = torch.einsum("iab,inbc,idc->inad", rot, covars, rot)
    x, y, z = means_c.unbind(-1)
    in_depth = (z > near_plane) & (z < far_plane)
    # Culled Gaussians still flow through autograd: keep their maths finite (0 * inf = nan)
    z = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy = Ks[:, None, 0, 0], Ks[:, None, 1, 1]
    cx, cy = Ks[:, None, 0, 2], Ks[:, None, 1, 2]
    u = fx * x / z + cx
    v = fy * y / z + cy

    # The Jacobian is taken at a point clamped to the frustum widened by 30 % of the half
    # field of view, so splats far outside the image do not blow up
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.clamp(x / z, min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)
    ty = z * torch.clamp(y / z, min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], -1
    ).reshape(z.shape + (2, 3))
    cov = jac @ covars_c @ jac.transpose(-1, -2)
    cxx = cov[..., 0, 0] + eps2d
    cxy = 0.5 * (cov[..., 0, 1] + cov[..., 1, 0])
    cyy = cov[..., 1, 1] + eps2d

    det_raw = cxx * cyy - cxy * cxy
    det = det_raw.clamp(min=1e-10)
    conics = torch.stack([cyy / det, -cxy / det, cxx / det], -1)

    with torch.no_grad():
        radius = torch.stack([cxx, cyy], -1).clamp(min=0).sqrt().mul(EXTEND).ceil()
        on_image = (
            (u + radius[..., 0] > 0)
            & (u - radius[..., 0] < width)
            & (v + radius[..., 1] > 0)
            & (v - radius[..., 1] < height)
        )
        keep = in_depth & (det_raw > 0) & on_image
        radii = (radius * keep[..., None]).to(torch.int32)

    return Projection(
        means2d=torch.stack([u, v], -1),
        cov2d=torch.stack([cxx, cxy, cyy], -1),
        conics=conics,
        depths=means_c[..., 2],
        radii=radii,
    )


def box_radii(cov2d: torch.Tensor, opacities: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Opacity-aware box half-sizes (gsplat's tight box), 0 where nothing can reach 1/255.

    cov2d: [I, N, 3], opacities: [I, N], radii: [I, N, 2] -> [I, N, 2] float.
    """
    with torch.no_grad():
        op = opacities.detach()
        extend = torch.sqrt(2.0 * torch.log((op / ALPHA_MIN).clamp(min=1.0))).clamp(max=EXTEND)
        sd = torch.stack([cov2d[..., 0], cov2d[..., 2]], -1).detach().clamp(min=0).sqrt()
        box = torch.ceil(extend[..., None] * sd)
        alive = (radii[..., 0] > 0) & (op >= ALPHA_MIN)
        return box * alive[..., None]


@torch.no_grad()
def bin_gaussians(
    means2d: torch.Tensor,
    boxes: torch.Tensor,
    depths: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> TileBins:
    """Assign Gaussians to the tiles their boxes overlap, sorted front to back per tile.

    means2d: [I, N, 2], boxes: [I, N, 2] half-sizes (0 = skip), depths: [I, N].
    """
    n_img, n = depths.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    mean = means2d.detach().reshape(-1, 2)
    box = boxes.reshape(-1, 2)
    lo = torch.floor((mean - box) / tile_size)
    hi = torch.ceil((mean + box) / tile_size)
    x0 = lo[:, 0].clamp(0, tiles_x).long()
    x1 = hi[:, 0].clamp(0, tiles_x).long()
    y0 = lo[:, 1].clamp(0, tiles_y).long()
    y1 = hi[:, 1].clamp(0, tiles_y).long()
    span_x = x1 - x0
    count = span_x * (y1 - y0) * (box[:, 0] > 0)

    # Expanding in global depth order and then stable-sorting by tile leaves every tile's list
    # front to back; mixing images in the depth order is harmless since tiles are per image
    order = torch.argsort(depths.detach().reshape(-1), stable=True)
    order = order[count[order] > 0]
    per = count[order]
    pair_gauss = torch.repeat_interleave(order, per)
    first = torch.cumsum(per, 0) - per
    local = torch.arange(pair_gauss.numel(), device=mean.device) - torch.repeat_interleave(
        first, per
    )
    width_of_pair = span_x[pair_gauss]
    tile_x = x0[pair_gauss] + local % width_of_pair
    tile_y = y0[pair_gauss] + local // width_of_pair
    tile = ((pair_gauss // max(n, 1)) * tiles_y + tile_y) * tiles_x + tile_x
    tile_sorted, perm = torch.sort(tile, stable=True)

    counts_all = torch.bincount(tile_sorted, minlength=n_img * tiles_x * tiles_y)
    starts_all = torch.cumsum(counts_all, 0) - counts_all
    tile_ids = torch.nonzero(counts_all).squeeze(-1)
    return TileBins(
        gaussian_ids=pair_gauss[perm],
        tile_ids=tile_ids,
        starts=starts_all[tile_ids],
        counts=counts_all[tile_ids],
    )


def pixel_features(tile_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Quadratic features of tile-local pixel centres -> [P, 6], P = tile_size^2, row-major.

    Coordinates are relative to the tile centre so the expanded quadratic loses little
    precision to cancellation.
    """
    coords = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - 0.5 * tile_size
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    return torch.stack([0.5 * px * px, 0.5 * py * py, px * py, px, py, torch.ones_like(px)], -1)


def exponent_coefficients(
    means_local: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor
) -> torch.Tensor:
    """Coefficients turning log(opacity) - sigma into a dot product with ``pixel_features``.

    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, dx = px - mx, expanded in (px, py), so that
    alpha before clamping is exp(coefficients . features).
    means_local: [..., 2] relative to the tile centre, conics: [..., 3], opacities: [...]
    -> [..., 6]; opacity 0 gives a constant of -inf (alpha 0).
    """
    mx, my = means_local.unbind(-1)
    a, b, c = conics.unbind(-1)
    lin_x = a * mx + b * my
    lin_y = b * mx + c * my
    const = torch.log(opacities) - 0.5 * (a * mx * mx + c * my * my) - b * mx * my
    return torch.stack([-a, -c, -b, lin_x, lin_y, const], -1)


def _exponent_vjp(
    grad_expo: torch.Tensor,
    means_local: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
) -> torch.Tensor:
    """Backward of ``exponent_coefficients``: grad_expo [..., 6] -> [..., 6] gradients of
    (mx, my, a, b, c, opacity)."""
    g_a, g_c, g_b, g_x, g_y, g_k = grad_expo.unbind(-1)
    mx, my = means_local.unbind(-1)
    a, b, c = conics.unbind(-1)
    # d const / d mean = -(a mx + b my, b mx + c my), folded into the linear terms' gradients
    u = g_x - g_k * mx
    w = g_y - g_k * my
    return torch.stack(
        [
            a * u + b * w,
            b * u + c * w,
            g_x * mx - g_a - 0.5 * g_k * mx * mx,
            g_x * my + g_y * mx - g_b - g_k * mx * my,
            g_y * my - g_c - 0.5 * g_k * my * my,
            # padding rows have opacity 0 and a zero gradient
            g_k / opacities.clamp(min=torch.finfo(opacities.dtype).tiny),
        ],
        -1,
    )


@functools.cache
def _threshold_below(value: float, dtype: torch.dtype) -> float:
    """Largest ``dtype`` number below ``value``: ``threshold(x, t)`` keeps x > t, i.e. x >= value."""
    return torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()


def _chunk_alpha(
    expo: torch.Tensor, feats: torch.Tensor, t_start: torch.Tensor, clamps: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """gsplat's per-pixel alpha of a run of list entries, and the transmittance after each.

    expo: [G, C, 6] from ``exponent_coefficients``, feats: [P, 6], t_start: [G, P]
    transmittance before the run (<= 1e-4 for pixels that already stopped, which masks all
    their entries) -> two [G, P, C] tensors, entries last so the scans run over contiguous
    memory:
    alpha: 0 for skipped entries (alpha < 1/255) and for every entry from the one that would
    drop T to <= 1e-4 on (gsplat stops before adding it);
    survive: T after each entry, exact up to the stopping entry.
    clamps: whether any opacity exceeds 0.999 (else the clamp is skipped).

    Conics are positive definite, so sigma < 0 (gsplat's other skip rule) can only come from
    rounding in the expanded quadratic; such entries are kept, at the cost of an exp(1e-5)
    factor, rather than dropping the pixel nearest a splat's centre.
    """
    alpha = torch.matmul(feats, expo.transpose(1, 2)).exp_()
    if clamps:
        alpha.clamp_(max=ALPHA_MAX)
    torch.nn.functional.threshold(alpha, _threshold_below(ALPHA_MIN, alpha.dtype), 0.0, True)
    survive = torch.cumprod(torch.rsub(alpha, 1.0), dim=-1).mul_(t_start[..., None])
    # T only falls along the list, so the last entry tells whether any pixel stops
    if bool(survive[..., -1].min() <= TRANSMITTANCE_MIN):
        keep = torch.nn.functional.threshold(survive, TRANSMITTANCE_MIN, 0.0).sign_()
        alpha.mul_(keep)
    return alpha, survive


def _transmittance(survive: torch.Tensor, t_start: torch.Tensor) -> torch.Tensor:
    """survive: [G, P, C] T after each entry, t_start: [G, P] -> [G, P, C] T before each."""
    trans = torch.empty_like(survive)
    trans[..., 0] = t_start
    trans[..., 1:] = survive[..., :-1]
    return trans


class _SavingBudget:
    """How many more [tile, pixel, entry] elements forward may keep for backward."""

    def __init__(self, elements: int):
        self.left = elements

    def take(self, elements: int) -> bool:
        if elements > self.left:
            return False
        self.left -= elements
        return True


class _CompositeTiles(torch.autograd.Function):
    """Front-to-back compositing of padded tile lists, CHUNK entries at a time.

    forward(attrs [G, K, 9], centres [G, 2], counts [G], feats [P, 6], clamps: bool,
    budget: _SavingBudget) -> [G, P, 4]: accumulated colour and alpha = 1 - T.
    attrs rows are one Gaussian each, (mx, my, a, b, c, opacity, r, g, b), front to back,
    padding rows (from counts[g] on) have opacity 0; centres are the tiles' centres in
    pixels. A tile leaves the loop once its list is exhausted or all its pixels have stopped,
    like gsplat's per-tile early exit. Per run, forward keeps alpha and survival for backward
    while the budget lasts, else backward recomputes them. Per-entry maths lives in here
    rather than in autograd to avoid its per-op overhead on ~1e5 (tile, Gaussian) pairs.
    """

    @staticmethod
    def forward(ctx, attrs, centres, counts, feats, clamps, budget):
        n_tiles, k, _ = attrs.shape
        means_local = attrs[..., :2] - centres[:, None]
        expo = exponent_coefficients(means_local, attrs[..., 2:5], attrs[..., 5])
        colors_ext = torch.nn.functional.pad(attrs[..., 6:], (0, 1), value=1.0)
        # T including every entry so far: <= 1e-4 once a pixel has stopped, and then every
        # later entry is masked because T only falls
        t_live = attrs.new_ones(n_tiles, feats.shape[0])
        out = attrs.new_zeros(n_tiles, feats.shape[0], 4)
        saved, runs = [], []
        for c0, c1 in _runs(k):
            active = ((counts > c0) & (t_live.amax(-1) > TRANSMITTANCE_MIN)).nonzero().squeeze(-1)
            if active.numel() == 0:
                break  # both conditions only ever turn off
            # Index only when some tiles have left: most runs keep them all
            every_tile = active.numel() == n_tiles
            rows = slice(None) if every_tile else active
            t_start = t_live[rows]
            alpha, survive = _chunk_alpha(expo[rows, c0:c1], feats, t_start, clamps)
            kept = budget.take(alpha.numel())
            weights = alpha.clone() if kept else alpha
            weights[..., 0].mul_(t_start)
            weights[..., 1:].mul_(survive[..., :-1])
            # Weights of a pixel sum to 1 - T, so the ones channel yields the alpha output
            out[rows] += weights @ colors_ext[rows, c0:c1]
            t_live = t_live.clone()  # t_start must keep the values before this run
            t_live[rows] = survive[..., -1]
            saved += [None if every_tile else active, t_start]
            saved += [alpha, survive] if kept else []
            runs.append((c0, c1, kept))
        ctx.save_for_backward(attrs, means_local, expo, feats, *saved)
        ctx.runs, ctx.clamps = runs, clamps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        attrs, means_local, expo, feats, *saved = ctx.saved_tensors
        colors_ext = torch.nn.functional.pad(attrs[..., 6:], (0, 1), value=1.0)
        grad_expo = torch.zeros_like(expo)
        grad_colors = torch.zeros_like(attrs[..., 6:])
        # sum over later entries of weight * (d loss / d weight), per pixel
        later_sum = grad_out.new_zeros(grad_out.shape[:2])
        runs, i = [], 0
        for c0, c1, kept in ctx.runs:
            n = 4 if kept else 2
            runs.append((c0, c1, saved[i : i + n]))
            i += n
        for c0, c1, items in reversed(runs):
            rows = slice(None) if items[0] is None else items[0]
            t_start = items[1]
            if len(items) == 4:
                alpha, survive = items[2:]
            else:
                alpha, survive = _chunk_alpha(expo[rows, c0:c1], feats, t_start, ctx.clamps)
            trans = _transmittance(survive, t_start)
            del survive
            grad = grad_out[rows]
            weights = alpha * trans
            grad_colors[rows, c0:c1] = (weights.transpose(1, 2) @ grad)[..., :-1]
            # d loss / d weight_k per pixel
            g_w = grad @ colors_ext[rows, c0:c1].transpose(1, 2)
            # Raising alpha_k scales every later weight by 1 / (1 - alpha_k) downwards;
            # stopped entries have alpha 0 here, so 1 - alpha is never 0
            later = weights.mul_(g_w)
            run_sum = later.sum(-1)
            later = torch.cumsum(later, -1).neg_().add_((run_sum + later_sum[rows])[..., None])
            later_sum[rows] += run_sum
            g_alpha = g_w.mul_(trans).sub_(later.div_(torch.rsub(alpha, 1.0)))
            # alpha = exp(expo . feats), so d alpha / d(expo . feats) = alpha, except through
            # the 0.999 clamp, which gsplat treats as constant
            slope = alpha * (alpha < ALPHA_MAX) if ctx.clamps else alpha
            grad_expo[rows, c0:c1] = g_alpha.mul_(slope).transpose(1, 2) @ feats
        grad_attrs = _exponent_vjp(grad_expo, means_local, attrs[..., 2:5], attrs[..., 5])
        return torch.cat([grad_attrs, grad_colors], -1), None, None, None, None, None


def _runs(k: int) -> list[tuple[int, int]]:
    """Split a list of k entries into near-equal runs of at most CHUNK."""
    n_runs = -(-k // CHUNK)
    length = -(-k // n_runs)
    return [(c0, min(c0 + length, k)) for c0 in range(0, k, length)]


def _blocks(counts: list[int], pixels: int) -> list[tuple[int, int, int]]:
    """Split tiles sorted by decreasing list length into (start, stop, K) blocks.

    A block's tiles have lists at least BLOCK_FILL of its longest, which bounds the work
    spent on padding.
    """
    blocks, start = [], 0
    while start < len(counts):
        k = counts[start]
        limit = max(1, min(BLOCK_ELEMENTS // (pixels * min(k, CHUNK)), BLOCK_ROWS // k))
        stop = start + 1
        while stop < len(counts) and stop - start < limit and counts[stop] >= BLOCK_FILL * k:
            stop += 1
        blocks.append((start, stop, k))
        start = stop
    return blocks


def _tile_centres(
    tile_ids: torch.Tensor, tiles_x: int, tiles_y: int, tile_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """tile_ids: [T] flat (image, row, column) -> [T, 2] centres in pixels."""
    in_image = tile_ids % (tiles_x * tiles_y)
    corner = torch.stack([in_image % tiles_x, in_image // tiles_x], -1).to(dtype)
    return (corner + 0.5) * tile_size


def composite_tiles(
    proj: Projection,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite the binned Gaussians, without background.

    opacities: [I, N], colors: [I, N, 3] -> (colour [I, 3, H, W], alpha [I, 1, H, W]).
    kernel: "native" (``native.py``'s fused loop, gsplat's direct sigma), "torch" (the
    padded-block path below) or "auto" (native on CPU unless ``GSLRM_COMPOSITE_KERNEL`` says
    otherwise or it cannot be built). Both give the same image to float tolerance.
    """
    n_img = opacities.shape[0]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    pixels = tile_size * tile_size
    dtype, device = opacities.dtype, opacities.device
    # One row per Gaussian: [I * N, 9]
    table = torch.cat([proj.means2d, proj.conics, opacities[..., None], colors], -1).reshape(-1, 9)
    lib = native.load() if _native_fits(kernel, table, tile_size) else None
    if lib is not None:
        grid = (n_img * tiles_y * tiles_x, tiles_x, tiles_y, tile_size)
        ids = (bins.gaussian_ids, bins.tile_ids, bins.starts, bins.counts)
        canvas = native.NativeComposite.apply(table, *ids, grid, lib)
        return _canvas_to_images(canvas, n_img, width, height, tile_size)

    feats = pixel_features(tile_size, dtype, device)  # [P, 6], P = tile_size^2
    table = torch.cat([table, table.new_zeros(1, 9)])  # [I * N + 1, 9]: padding row, opacity 0
    pad_row = table.shape[0] - 1
    clamps = bool(opacities.numel() and opacities.max() > ALPHA_MAX)

    by_len = torch.argsort(bins.counts, descending=True, stable=True)  # [T]
    # [T] each, tiles sorted by decreasing list length
    tile_ids, starts, counts = bins.tile_ids[by_len], bins.starts[by_len], bins.counts[by_len]
    centres = _tile_centres(tile_ids, tiles_x, tiles_y, tile_size, dtype)  # [T, 2]
    blocks = _blocks(counts.tolist(), pixels)
    budget = _SavingBudget(SAVED_ELEMENTS)
    # One gather for all blocks: each gather's backward allocates a full-size gradient table
    gather = []
    for start, stop, k in blocks:
        slot = torch.arange(k, device=device)  # [K]
        valid = slot < counts[start:stop, None]  # [G, K], G = stop - start
        pair = torch.where(valid, starts[start:stop, None] + slot, 0)  # [G, K] into gaussian_ids
        gather.append(torch.where(valid, bins.gaussian_ids[pair], pad_row).reshape(-1))
    # [sum of G * K, 9]: every block's padded lists, one after the other
    padded = table.index_select(0, torch.cat(gather)) if gather else table[:0]
    sizes = [(stop - start) * k for start, stop, k in blocks]
    outs = [
        _CompositeTiles.apply(
            block.view(stop - start, k, 9),
            centres[start:stop],
            counts[start:stop],
            feats,
            clamps,
            budget,
        )
        for block, (start, stop, k) in zip(padded.split(sizes), blocks, strict=True)
    ]

    # [I * tiles_y * tiles_x, P, 4]; each block's output is [G, P, 4]
    canvas = torch.zeros(n_img * tiles_x * tiles_y, pixels, 4, dtype=dtype, device=device)
    if outs:
        canvas = canvas.index_copy(0, tile_ids, torch.cat(outs))
    else:
        # Keep the graph connected so a loss on an empty render can still call backward()
        canvas = canvas + 0.0 * table.sum()
    return _canvas_to_images(canvas, n_img, width, height, tile_size)


def _native_fits(kernel: str, table: torch.Tensor, tile_size: int) -> bool:
    """Whether ``kernel`` (auto/native/torch) asks for the native kernel on this table."""
    if kernel not in native.KERNELS:
        raise ValueError(
            f"unknown compositing kernel {kernel!r}; valid: {', '.join(native.KERNELS)}"
        )
    if kernel == "auto":
        kernel = native.kernel_choice()
    fits = (
        table.device.type == "cpu"
        and table.dtype in (torch.float32, torch.float64)
        and tile_size <= native.MAX_TILE_SIZE
    )
    if kernel == "native" and not fits:
        raise ValueError(
            "the native compositing kernel needs float32/float64 CPU tensors and tiles of at "
            f"most {native.MAX_TILE_SIZE} px, got {table.dtype} on {table.device}, "
            f"tile {tile_size} px"
        )
    return kernel != "torch" and fits


def _canvas_to_images(
    canvas: torch.Tensor, n_img: int, width: int, height: int, tile_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """canvas: [I * tiles_y * tiles_x, P, 4] -> (colour [I, 3, H, W], alpha [I, 1, H, W])."""
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    # [I, tiles_y, tiles_x, ts, ts, 4] -> [I, 4, H, W]
    image = (
        canvas.view(n_img, tiles_y, tiles_x, tile_size, tile_size, 4)
        .permute(0, 5, 1, 3, 2, 4)
        .reshape(n_img, 4, tiles_y * tile_size, tiles_x * tile_size)[..., :height, :width]
    )
    return image[:, :3], image[:, 3:]


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    w2c: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor,
    near_plane: float,
    tile_size: int = TILE_SIZE,
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render B scenes from V cameras each (kernel: see ``composite_tiles``).

    means: [B, N, 3], quats: [B, N, 4], scales: [B, N, 3], opacities: [B, N],
    colors: [B, N, 3], w2c: [B, V, 4, 4], Ks: [B, V, 3, 3], background: [B, V, 3]
    -> (rgb [B, V, 3, H, W], alpha [B, V, 1, H, W]).
    """
    n_batch, n_views = w2c.shape[:2]
    n_img = n_batch * n_views

    def per_image(t: torch.Tensor) -> torch.Tensor:
        return t[:, None].expand(n_batch, n_views, *t.shape[1:]).reshape(n_img, *t.shape[1:])

    covars = covariance_3d(quats, scales)
    proj = project(
        per_image(means),
        per_image(covars),
        w2c.reshape(n_img, 4, 4),
        Ks.reshape(n_img, 3, 3),
        width,
        height,
        near_plane,
    )
    op_img = per_image(opacities)
    boxes = box_radii(proj.cov2d, op_img, proj.radii)
    bins = bin_gaussians(proj.means2d, boxes, proj.depths, width, height, tile_size)
    color, alpha = composite_tiles(
        proj, op_img, per_image(colors), bins, width, height, tile_size, kernel
    )
    bg = background.reshape(n_img, 3, 1, 1).to(color.dtype)
    rgb = color + (1.0 - alpha) * bg
    shape = (n_batch, n_views)
    return rgb.reshape(shape + rgb.shape[1:]), alpha.reshape(shape + alpha.shape[1:])
