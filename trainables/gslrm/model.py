"""GS-LRM: posed input views -> one transformer -> one 3D Gaussian per input pixel.

Built to have FaceLift's parameter layout and input/output meaning, so FaceLift's pretrained
weights load 1:1 (see `checkpoint.py`; tests/test_facelift_compat.py pins the layout):

- input per view, 9 channels per pixel: RGB * 2 - 1, then 6 ray channels. With
  `use_custom_plucker` (FaceLift's default): unit direction d and the ray's closest point to
  the origin o + (-o.d) d. Otherwise standard Plücker: d and the moment o x d.
  Rays pass through pixel centres.
- p x p patches flattened in (row, col, channel) order -> bias-free Linear -> tokens of all
  views in one sequence, `n_gaussians` learned tokens in front, one bias-free LayerNorm,
  pre-LN transformer blocks (bias-free, SDPA attention, GELU MLP x4).
- each image token -> LayerNorm -> Linear to 14 values per pixel of its patch:
  xyz 3, colour (SH DC) 3, scale 3, quaternion (w, x, y, z) 4, opacity 1. The learned tokens
  decode to free Gaussians whose xyz is used as it is; they come first.
- activations: position along the pixel's ray t = (2 sigmoid(mean xyz) - 1) * 1.8 + (-o.d),
  i.e. within +-1.8 of the ray's closest point to the origin; scale = exp(min(raw - 2.3, -1.2));
  opacity = sigmoid(raw - 2); colour = max(0, 0.2821 f + 0.5).

`model.gaussians.downsample = k` (ours, default 1) keeps the Gaussian of one pixel per k x k
block, which changes no parameter: it only makes CPU renders cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainables.gslrm.config import ModelConfig
from trainables.gslrm.types import Cameras, Gaussians

GAUSSIAN_CHANNELS = 14  # xyz 3, colour 3, scale 3, quaternion 4, opacity 1
SH_C0 = 0.28209479177387814
RAY_HALF_RANGE = 1.8
SCALE_BIAS, SCALE_MAX_LOG = 2.3, -1.2
OPACITY_BIAS = 2.0


def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype rays and Gaussian centres are computed in: float32, or float64 if given."""
    return torch.promote_types(dtype, torch.float32)


def pixel_rays(
    c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres, in float32 (float64 cameras stay float64) under any autocast.

    c2w: [..., 4, 4], intrinsics: [..., 4] (fx, fy, cx, cy)
    returns origins [..., H, W, 3], unit directions [..., H, W, 3] (world frame)
    """
    # Autocast would run `rotation @ cam` in bf16 (8 mantissa bits): every ray direction, and
    # with it every pixel-aligned Gaussian centre, moves (at 256 px on the mouse rig, ~1 px mean
    # and up to ~10 px in the rig's views). Geometry is cheap: always full precision.
    dtype = geometry_dtype(c2w.dtype)
    with torch.autocast(c2w.device.type, enabled=False):
        c2w, intrinsics = c2w.to(dtype), intrinsics.to(dtype)
        ys, xs = torch.meshgrid(
            torch.arange(height, device=c2w.device, dtype=dtype) + 0.5,
            torch.arange(width, device=c2w.device, dtype=dtype) + 0.5,
            indexing="ij",
        )  # [H, W] each
        fx, fy, cx, cy = (intrinsics[..., i, None, None] for i in range(4))  # [..., 1, 1] each
        cam = torch.stack(
            [(xs - cx) / fx, (ys - cy) / fy, torch.ones_like(xs).expand_as(xs - cx)], -1
        )  # [..., H, W, 3] in the camera frame
        cam = F.normalize(cam, dim=-1)
        rotation = c2w[..., None, None, :3, :3]  # [..., 1, 1, 3, 3]
        directions = (rotation @ cam[..., None])[..., 0]  # [..., H, W, 3]
        origins = c2w[..., None, None, :3, 3].expand_as(directions)  # [..., H, W, 3]
    return origins, directions


def ray_features(origins: torch.Tensor, directions: torch.Tensor, custom: bool) -> torch.Tensor:
    """[..., 3], [..., 3] -> [..., 6]: (d, o + (-o.d) d) if custom, else Plücker (d, o x d)."""
    if custom:
        along = -(origins * directions).sum(-1, keepdim=True)
        return torch.cat([directions, origins + along * directions], -1)
    return torch.cat([directions, torch.cross(origins, directions, dim=-1)], -1)


class Patchify(nn.Module):
    """[B, V, C, H, W] -> [B, V * (H/p) * (W/p), p * p * C], features in (row, col, channel) order."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, v, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, v, c, h // p, p, w // p, p)
        x = x.permute(0, 1, 3, 5, 4, 6, 2)  # b v hp wp row col c
        return x.reshape(b, v * (h // p) * (w // p), p * p * c)


class Attention(nn.Module):
    def __init__(self, d: int, d_head: int):
        super().__init__()
        self.heads = d // d_head
        self.to_qkv = nn.Linear(d, 3 * d, bias=False)
        self.fc = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.fc(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d, bias=False), nn.GELU(), nn.Linear(4 * d, d, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Block(nn.Module):
    """Pre-LN transformer block without biases."""

    def __init__(self, d: int, d_head: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, bias=False)
        self.attn = Attention(d, d_head)
        self.norm2 = nn.LayerNorm(d, bias=False)
        self.mlp = Mlp(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FreeGaussianHead(nn.Module):
    """Decodes the learned tokens into free Gaussians: [B, n, d] -> [B, n, 14]."""

    def __init__(self, d: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(d, bias=False)
        self.linear = nn.Linear(d, GAUSSIAN_CHANNELS, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.layernorm(tokens))


def activate(raw: torch.Tensor, xyz: torch.Tensor, clip_xyz: bool) -> Gaussians:
    """Raw decoder outputs [B, N, 14] and positions [B, N, 3] -> rendered-ready Gaussians."""
    _, colour, scale, quat, opacity = raw.split([3, 3, 3, 4, 1], dim=-1)
    if clip_xyz:
        xyz = xyz.clamp(-1.0, 1.0)
    return Gaussians(
        means=xyz,
        scales=torch.exp(torch.clamp(scale - SCALE_BIAS, max=SCALE_MAX_LOG)),
        quats=F.normalize(quat, dim=-1),
        opacities=torch.sigmoid(opacity[..., 0] - OPACITY_BIAS),
        colors=torch.clamp(SH_C0 * colour + 0.5, min=0.0),
    )


class GSLRM(nn.Module):
    """The reconstruction model. Attribute names are FaceLift's state_dict names."""

    def __init__(self, config: ModelConfig, grad_checkpoint_every: int = 0):
        super().__init__()
        d, p = config.transformer.d, config.image_tokenizer.patch_size
        self.config = config
        self.patch_size = p
        self.grad_checkpoint_every = grad_checkpoint_every
        self.gaussian_position_embeddings = nn.Parameter(
            torch.empty(config.gaussians.n_gaussians, d)
        )
        self.patch_embedder = nn.Sequential(
            Patchify(p), nn.Linear(config.image_tokenizer.in_channels * p * p, d, bias=False)
        )
        self.input_layer_norm = nn.LayerNorm(d, bias=False)
        self.transformer_layers = nn.ModuleList(
            Block(d, config.transformer.d_head) for _ in range(config.transformer.n_layer)
        )
        self.gaussian_upsampler = FreeGaussianHead(d)
        self.pixel_gaussian_decoder = nn.Sequential(
            nn.LayerNorm(d, bias=False), nn.Linear(d, GAUSSIAN_CHANNELS * p * p, bias=False)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.gaussian_position_embeddings, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)

    def encode(self, images: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        """images [B, V, 3, H, W] in [0, 1] -> per-view model input [B, V, 9, H, W]."""
        h, w = images.shape[-2:]
        origins, directions = pixel_rays(cameras.c2w, cameras.intrinsics, h, w)
        rays = ray_features(origins, directions, self.config.use_custom_plucker)
        return torch.cat([images * 2 - 1, rays.permute(0, 1, 4, 2, 3).to(images.dtype)], dim=2)

    def forward_raw(
        self, images: torch.Tensor, cameras: Cameras
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw decoder outputs before activation, in the autocast dtype if one is active.

        images: [B, V, 3, H, W], cameras: [B, V]
        returns free [B, n, 14], pixel [B, V, H, W, 14]
        (n = n_gaussians, p = patch size, P = V * (H / p) * (W / p) image tokens)
        """
        b, v, _, h, w = images.shape
        p = self.patch_size
        x = self.encode(images, cameras)  # [B, V, 9, H, W]
        tokens = self.patch_embedder(x)  # [B, P, d]
        learned = self.gaussian_position_embeddings[None].expand(b, -1, -1)  # [B, n, d]
        x = torch.cat([learned.to(tokens.dtype), tokens], dim=1)  # [B, n + P, d]
        x = self.input_layer_norm(x)  # [B, n + P, d]
        for index, block in enumerate(self.transformer_layers):
            if (
                self.training
                and self.grad_checkpoint_every
                and index % self.grad_checkpoint_every == 0
            ):
                x = checkpoint(block, x, use_reentrant=False)  # [B, n + P, d]
            else:
                x = block(x)  # [B, n + P, d]
        n_free = self.gaussian_position_embeddings.shape[0]
        free = self.gaussian_upsampler(x[:, :n_free])  # [B, n, 14]
        pixel = self.pixel_gaussian_decoder(x[:, n_free:])  # [B, P, p * p * 14]
        # tokens are (view, patch row, patch col); a token's outputs are (row, col) in its patch
        pixel = pixel.reshape(b, v, h // p, w // p, p, p, GAUSSIAN_CHANNELS)
        pixel = pixel.permute(0, 1, 2, 4, 3, 5, 6)  # [B, V, H/p, p, W/p, p, 14]
        pixel = pixel.reshape(b, v, h, w, GAUSSIAN_CHANNELS)  # [B, V, H, W, 14]
        return free, pixel

    def forward(self, images: torch.Tensor, cameras: Cameras) -> Gaussians:
        """images [B, V, 3, H, W] in [0, 1], cameras [B, V] -> Gaussians with
        N = n_gaussians + V * (H / k) * (W / k) (k = gaussians.downsample), free ones first.

        Only the transformer runs in the autocast dtype: the Gaussians are placed and activated
        in float32 (float64 for float64 cameras) whatever autocast is active.
        """
        free, pixel = self.forward_raw(images, cameras)
        h, w = images.shape[-2:]
        dtype = geometry_dtype(cameras.c2w.dtype)
        with torch.autocast(images.device.type, enabled=False):
            origins, directions = pixel_rays(cameras.c2w, cameras.intrinsics, h, w)
            k = self.config.gaussians.downsample
            if k > 1:
                pixel, origins, directions = (
                    t[:, :, k // 2 :: k, k // 2 :: k] for t in (pixel, origins, directions)
                )  # [B, V, H/k, W/k, 14 or 3]
            pixel = pixel.flatten(1, 3).to(dtype)  # [B, M, 14], M = V * H/k * W/k
            origins, directions = origins.flatten(1, 3), directions.flatten(1, 3)  # [B, M, 3]
            free = free.to(dtype)  # [B, n, 14]
            if self.config.hard_pixelalign:
                s = torch.sigmoid(pixel[..., :3].mean(-1, keepdim=True))  # [B, M, 1]
                closest = -(origins * directions).sum(-1, keepdim=True)  # [B, M, 1]
                pixel_xyz = origins + ((2 * s - 1) * RAY_HALF_RANGE + closest) * directions
            else:
                pixel_xyz = pixel[..., :3]  # [B, M, 3]
            raw = torch.cat([free, pixel], dim=1)  # [B, N, 14]
            xyz = torch.cat([free[..., :3], pixel_xyz], dim=1)  # [B, N, 3]
            return activate(raw, xyz, self.config.clip_xyz)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
