"""Synthetic mouse dataset in the FaceLift / GS-LRM on-disk format.

Why synthetic: the study needs a dataset that exists on every machine (CI, laptops, a
fresh cluster node) and behaves like the real arena recordings in the ways that matter
to GS-LRM: a small textured, articulated object seen by a fixed, very uneven 6-camera
rig, with exact foreground masks.

The mouse
    Built from analytic primitives in a mouse-local frame (x forward, y left, z up,
    feet on z = 0): a pear-shaped body (two ellipsoids), a head with snout, nose, eyes
    and two flattened-ellipsoid ears, four limb capsules with paws and a tapered tail
    made of a chain of capsules. Every sample draws a pose (body yaw over 360 deg,
    head yaw/pitch, limb swing, tail curl), a size (+-15 %) and a fur colour (brown,
    agouti, grey, near-black or off-white; the base colour never exceeds 0.85 per
    channel so the mouse stays separable from the white background). Fur detail is a
    sum of random sinusoids evaluated in mouse-local 3D coordinates, plus a darker back
    and lighter belly, so the texture is a property of the surface and all six views of
    a sample are consistent. Shading is Lambertian from one fixed world light plus
    ambient, i.e. view independent as well.

    The nose-to-tail-base length is about ``0.36 * MOUSE_SCALE`` units (the curled
    tail adds ~0.28 * MOUSE_SCALE more). MOUSE_SCALE is tuned so the mouse covers ~5 % of the
    image on the mouse6 rig (see "Rigs" below for why it is not 1).

Rendering
    Exact ray casting: for every pixel a centred ``SUPERSAMPLE x SUPERSAMPLE`` grid of
    sub-pixel rays is intersected analytically with every primitive (ray-ellipsoid and
    ray-capsule quadratics, numpy-vectorised). Only rays inside the projected bounding
    box of a primitive's bounding sphere are tested. Alpha is the fraction of sub-rays
    that hit (multiples of 1/16); RGB is the un-premultiplied mean colour of the hitting
    sub-rays and white where nothing was hit. Pixel centres are at (x + 0.5, y + 0.5).

Rigs (figures at 512 px; intrinsics are scaled by size / 512, images are square)
    mouse6: a fixed, deliberately uneven arena rig. Azimuths 17.0, 30.5, 76.1, 98.8,
        137.0, 168.4 deg (sorted adjacent gaps 13.5, 45.6, 22.7, 38.2, 31.4, 208.6),
        elevations 12, -51, 35, 78, 5, 24 deg (camera 1 looks up from below the floor),
        distances 2.6, 2.0, 3.1, 3.4, 2.3, 2.8 units, fx 725-820 px, principal points
        scattered around (267, 245). Each camera looks at a point within a few cm of
        (0, 0, 0.07 * MOUSE_SCALE), the mouse's centre.
    turntable6: azimuths every 60 deg, elevation 20 deg, distance 2.7, cx = cy = size/2.
        fx is the mean mouse6 fx (hfov ~37 deg) so the mouse covers a similar share of
        the image on both rigs (a 20-25 deg hfov would make it ~3x larger).

    With these rig figures a 0.4-unit mouse covers only ~1.3 % of a view, so the mouse
    (not the rig) is scaled by MOUSE_SCALE to reach the ~5 % mean foreground of the
    real recordings.

Output (what downstream readers rely on)
    DIR/data_train.txt, DIR/data_val.txt   sample folders relative to DIR, one a line
    DIR/data_test.txt                      held-out test split (only with --test-samples > 0)
    DIR/samples/NNNNNN/opencv_cameras.json {"id", "frames": [{w, h, fx, fy, cx, cy,
                                            w2c (4x4 row-major, OpenCV), file_path}]}
    DIR/samples/NNNNNN/images/cam_XX.png   RGBA, 8 bit
    DIR/test_samples/NNNNNN/...            the test samples, same layout, ids test_NNNNNN
    DIR/synthetic_meta.json                generation parameters and summary stats

Test split: the test mice come from their own random stream (seed, index, TEST_STREAM), so
they differ from every train / val mouse whatever --samples is, and asking for a test split
leaves the train / val files of the same other flags byte for byte as they were.

Usage
    python -m trainables.gslrm.data.synthetic --out DIR --samples N --size PX \\
        --rig mouse6|turntable6 --seed S [--val-fraction F] [--test-samples T] [--contact-sheet PNG]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import re
import shutil
import time
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.gslrm.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from trainables.gslrm.rig import look_at_w2c, orbit_center

GENERATOR_VERSION = 1
SUPERSAMPLE = 4  # sub-rays per pixel side: alpha takes values k / 16
REFERENCE_SIZE = 512  # the rig figures below are given for 512 px images
MOUSE_SCALE = 1.9  # see module docstring: tuned for ~5 % foreground on mouse6
MAX_ALBEDO = 0.85  # keeps the fur distinguishable from the white background
LIGHT_DIR = np.array([0.4, 0.3, 1.0]) / np.linalg.norm([0.4, 0.3, 1.0])
AMBIENT = 0.4
DIFFUSE = 0.6
RIGS = ("mouse6", "turntable6")
META_NAME = "synthetic_meta.json"
TRAIN_LIST = "data_train.txt"
VAL_LIST = "data_val.txt"
TEST_LIST = "data_test.txt"
TEST_DIR = "test_samples"
# Third word of the test samples' seed sequence: train / val mice use (seed, index) only.
TEST_STREAM = 1

# Materials: the primitive's `material` indexes this list.
FUR, SKIN, EYE = 0, 1, 2


# ----------------------------------------------------------------------------- cameras


@dataclass(frozen=True)
class CameraSpec:
    """One rig camera at the 512 px reference size (angles in degrees)."""

    azimuth: float
    elevation: float
    distance: float
    fx: float
    fy: float
    cx: float
    cy: float
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera for one image. w2c: [4, 4] world-to-camera, OpenCV axes."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    w2c: np.ndarray

    @property
    def c2w(self) -> np.ndarray:
        """[4, 4] camera-to-world."""
        return np.linalg.inv(self.w2c)

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        r, t = self.w2c[:3, :3], self.w2c[:3, 3]
        return -r.T @ t


_MOUSE_CENTER_Z = 0.07 * MOUSE_SCALE


def _target(dx: float, dy: float, dz: float) -> tuple[float, float, float]:
    return (dx, dy, _MOUSE_CENTER_Z + dz)


MOUSE6_SPECS: tuple[CameraSpec, ...] = (
    CameraSpec(17.0, 12.0, 2.6, 760.0, 761.5, 267.0, 245.0, _target(0.01, -0.02, 0.00)),
    CameraSpec(30.5, -51.0, 2.0, 725.0, 726.0, 271.4, 241.2, _target(-0.02, 0.01, -0.02)),
    CameraSpec(76.1, 35.0, 3.1, 790.0, 788.4, 262.3, 248.9, _target(0.00, 0.02, 0.01)),
    CameraSpec(98.8, 78.0, 3.4, 820.0, 821.7, 265.1, 243.6, _target(0.02, 0.00, -0.01)),
    CameraSpec(137.0, 5.0, 2.3, 742.0, 740.9, 269.8, 247.3, _target(-0.01, -0.01, 0.02)),
    CameraSpec(168.4, 24.0, 2.8, 778.0, 779.2, 264.4, 243.1, _target(0.01, 0.02, 0.00)),
)

_TURNTABLE_FX = float(np.mean([s.fx for s in MOUSE6_SPECS]))
TURNTABLE6_SPECS: tuple[CameraSpec, ...] = tuple(
    CameraSpec(60.0 * i, 20.0, 2.7, _TURNTABLE_FX, _TURNTABLE_FX, 256.0, 256.0, _target(0, 0, 0))
    for i in range(6)
)


def rig_specs(rig: str) -> tuple[CameraSpec, ...]:
    """The six camera specs of a named rig, in rig order."""
    if rig == "mouse6":
        return MOUSE6_SPECS
    if rig == "turntable6":
        return TURNTABLE6_SPECS
    raise ValueError(f"unknown rig {rig!r}; expected one of {RIGS}")


def spec_center(spec: CameraSpec) -> np.ndarray:
    """[3] camera position: `distance` from the world origin at the spec's angles."""
    return orbit_center(spec.distance, spec.azimuth, spec.elevation)


def make_rig(rig: str, size: int) -> list[Camera]:
    """The rig's cameras for square `size` x `size` images, in rig order 0..5."""
    scale = size / REFERENCE_SIZE
    cams = []
    for spec in rig_specs(rig):
        w2c = look_at_w2c(spec_center(spec), np.asarray(spec.target, dtype=np.float64))
        cams.append(
            Camera(
                size, size, spec.fx * scale, spec.fy * scale, spec.cx * scale, spec.cy * scale, w2c
            )
        )
    return cams


# ----------------------------------------------------------------------------- mouse


@dataclass(frozen=True)
class Ellipsoid:
    """center [3], rot [3, 3] (columns: local axes in world), axes [3] semi-axis lengths."""

    center: np.ndarray
    rot: np.ndarray
    axes: np.ndarray
    material: int

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return self.center, float(self.axes.max())


@dataclass(frozen=True)
class Capsule:
    """Segment a [3] -> b [3] swept by a sphere of `radius`."""

    a: np.ndarray
    b: np.ndarray
    radius: float
    material: int

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return (self.a + self.b) / 2, float(np.linalg.norm(self.b - self.a) / 2 + self.radius)


Primitive = Ellipsoid | Capsule


@dataclass(frozen=True)
class FurTexture:
    """Fur colour model, evaluated in mouse-local coordinates (pre-scale, pre-pose).

    waves: [K, 3] wave vectors (rad per unit), phases: [K], amps: [K]
    """

    fur: np.ndarray
    skin: np.ndarray
    eye: np.ndarray
    waves: np.ndarray
    phases: np.ndarray
    amps: np.ndarray


@dataclass(frozen=True)
class Mouse:
    """A posed mouse: world-space primitives plus the mouse-local <-> world similarity."""

    primitives: tuple[Primitive, ...]
    texture: FurTexture
    yaw: float
    scale: float
    offset: np.ndarray  # [3] world translation


def rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


_FUR_PALETTE = np.array(
    [
        [0.45, 0.32, 0.22],  # brown
        [0.55, 0.43, 0.30],  # agouti
        [0.48, 0.47, 0.46],  # grey
        [0.13, 0.12, 0.11],  # near-black
        [0.84, 0.82, 0.80],  # off-white
    ]
)
_PINK = np.array([0.83, 0.60, 0.58])


def sample_texture(rng: np.random.Generator) -> FurTexture:
    """Random fur colour and fur-like noise; base colours never exceed MAX_ALBEDO."""
    base = _FUR_PALETTE[rng.integers(len(_FUR_PALETTE))]
    fur = np.clip(base + rng.uniform(-0.05, 0.05, 3), 0.03, MAX_ALBEDO)
    # Tail, ears and paws: pink skin, darker on dark-furred mice.
    fur_share = rng.uniform(0.2, 0.6)
    skin = np.clip((1 - fur_share) * _PINK + fur_share * fur, 0.0, MAX_ALBEDO)
    eye = np.array([0.03, 0.03, 0.035])
    coarse, fine = 10, 8
    # Wave vectors mostly across the body axis give streaks that run nose-to-tail, like fur.
    dirs = rng.normal(size=(coarse + fine, 3)) * np.array([0.35, 1.0, 1.0])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = np.concatenate([rng.uniform(60.0, 260.0, coarse), rng.uniform(300.0, 700.0, fine)])
    amps = np.concatenate([rng.uniform(0.3, 1.0, coarse), 0.5 * rng.uniform(0.3, 1.0, fine)])
    amps *= 0.35 / amps.sum()  # the noise then stays within about +-0.15 most of the time
    k = coarse + fine
    return FurTexture(fur, skin, eye, dirs * freqs[:, None], rng.uniform(0, 2 * np.pi, k), amps)


TAIL_REACH = 0.30  # max horizontal distance of the tail from the mouse origin (local units)


def _tail_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n + 1, 3] tail joint positions (mouse-local), curling randomly, resting on the floor.

    A long straight tail of the (scaled-up) mouse would leave the close cameras' frames,
    so the tail always curls and is shortened about its base until it stays within
    TAIL_REACH of the mouse origin.
    """
    length = rng.uniform(0.24, 0.32)
    seg = length / n
    curl1 = rng.choice([-1.0, 1.0]) * rng.uniform(2.5, 7.0)
    curl2 = rng.uniform(-10.0, 10.0)
    pitch0 = rng.uniform(-0.7, -0.2)
    pts = [np.array([-0.13, 0.0, 0.06])]
    for i in range(n):
        s = (i + 0.5) * seg
        heading = math.pi + curl1 * s + curl2 * s * s
        pitch = pitch0 * max(0.0, 1.0 - 3.0 * s)
        step = seg * np.array(
            [
                math.cos(pitch) * math.cos(heading),
                math.cos(pitch) * math.sin(heading),
                math.sin(pitch),
            ]
        )
        nxt = pts[-1] + step
        nxt[2] = max(nxt[2], 0.006)
        pts.append(nxt)
    tail = np.stack(pts)
    while np.linalg.norm(tail[:, :2], axis=1).max() > TAIL_REACH:
        tail = tail[0] + 0.95 * (tail - tail[0])
    return tail


def _local_primitives(rng: np.random.Generator) -> list[Primitive]:
    """Mouse primitives in mouse-local coordinates (pre-scale), random pose."""
    e = Ellipsoid
    prims: list[Primitive] = []
    body_rot = rot_y(-rng.uniform(-0.08, 0.15))  # hunch: nose slightly up or down
    prims.append(e(np.array([0.02, 0, 0.075]), body_rot, np.array([0.12, 0.062, 0.058]), FUR))
    prims.append(e(np.array([-0.06, 0, 0.07]), body_rot, np.array([0.085, 0.075, 0.066]), FUR))

    neck = np.array([0.10, 0.0, 0.085])
    head_rot = rot_z(rng.uniform(-0.6, 0.6)) @ rot_y(rng.uniform(-0.3, 0.35))

    def head_pt(p: Sequence[float]) -> np.ndarray:
        return neck + head_rot @ np.asarray(p, dtype=np.float64)

    prims.append(e(head_pt([0.05, 0, 0.008]), head_rot, np.array([0.07, 0.046, 0.044]), FUR))
    prims.append(e(head_pt([0.10, 0, -0.004]), head_rot, np.array([0.042, 0.026, 0.024]), FUR))
    prims.append(e(head_pt([0.14, 0, -0.006]), head_rot, np.full(3, 0.009), SKIN))
    for side in (-1.0, 1.0):
        prims.append(e(head_pt([0.085, side * 0.03, 0.018]), head_rot, np.full(3, 0.009), EYE))
        ear_rot = head_rot @ rot_z(side * 0.35) @ rot_x(side * 0.3)
        prims.append(
            e(head_pt([0.03, side * 0.04, 0.048]), ear_rot, np.array([0.006, 0.027, 0.029]), SKIN)
        )

    for fore_x, foot_x, y, radius in ((0.075, 0.085, 0.036, 0.013), (-0.07, -0.06, 0.05, 0.017)):
        for side in (-1.0, 1.0):
            swing = rng.uniform(-0.035, 0.035)
            hip = np.array([fore_x, side * y, 0.055])
            foot = np.array([foot_x + swing, side * (y + 0.008), 0.014])
            prims.append(Capsule(hip, foot, radius, FUR))
            paw = foot + np.array([0.012, 0, -0.006])
            prims.append(e(paw, np.eye(3), np.array([0.018, 0.010, 0.006]), SKIN))

    pts = _tail_points(rng, 10)
    radii = np.linspace(0.012, 0.004, len(pts) - 1)
    for p0, p1, r in zip(pts[:-1], pts[1:], radii, strict=True):
        prims.append(Capsule(p0, p1, float(r), SKIN))
    return prims


def _to_world(prim: Primitive, rot: np.ndarray, scale: float, offset: np.ndarray) -> Primitive:
    """Apply the similarity x -> scale * rot @ x + offset to a primitive."""
    if isinstance(prim, Ellipsoid):
        return Ellipsoid(
            scale * rot @ prim.center + offset, rot @ prim.rot, scale * prim.axes, prim.material
        )
    return Capsule(
        scale * rot @ prim.a + offset,
        scale * rot @ prim.b + offset,
        scale * prim.radius,
        prim.material,
    )


def sample_mouse(rng: np.random.Generator) -> Mouse:
    """A random mouse: pose, size (+-15 %), yaw over 360 deg, fur colour and texture."""
    texture = sample_texture(rng)
    local = _local_primitives(rng)
    yaw = float(rng.uniform(0.0, 2.0 * math.pi))
    scale = float(MOUSE_SCALE * rng.uniform(0.85, 1.15))
    offset = np.array([*rng.uniform(-0.03, 0.03, 2), 0.0])
    rot = rot_z(yaw)
    prims = tuple(_to_world(p, rot, scale, offset) for p in local)
    return Mouse(prims, texture, yaw, scale, offset)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """Generator for sample `index`: independent of how many samples are generated."""
    return np.random.default_rng([int(seed), int(index)])


def test_sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of test sample `index`: a stream no train / val sample uses."""
    return np.random.default_rng([int(seed), int(index), TEST_STREAM])


# ----------------------------------------------------------------------------- ray casting


def intersect_ellipsoid(origin: np.ndarray, dirs: np.ndarray, prim: Ellipsoid) -> np.ndarray:
    """Entry distance t [...] of rays origin [3] + t * dirs [..., 3]; inf where missed."""
    o = (prim.rot.T @ (origin - prim.center)) / prim.axes
    d = (dirs @ prim.rot) / prim.axes
    a = np.einsum("...i,...i->...", d, d)
    b = d @ o
    c = float(o @ o) - 1.0
    disc = b * b - a * c
    hit = disc >= 0.0
    t = (-b - np.sqrt(np.where(hit, disc, 0.0))) / a
    return np.where(hit & (t > 0.0), t, np.inf)


def _intersect_sphere(
    origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, radius: float
) -> np.ndarray:
    """Entry distance t [...] for unit-length dirs [..., 3]; inf where missed."""
    oc = origin - center
    b = dirs @ oc
    c = float(oc @ oc) - radius * radius
    disc = b * b - c
    hit = disc >= 0.0
    t = -b - np.sqrt(np.where(hit, disc, 0.0))
    return np.where(hit & (t > 0.0), t, np.inf)


def intersect_capsule(origin: np.ndarray, dirs: np.ndarray, prim: Capsule) -> np.ndarray:
    """Entry distance t [...] for unit-length dirs [..., 3]; inf where missed.

    The capsule is the union of a finite cylinder and two end spheres, so its entry point
    is the nearest of the cylinder's side entry and the two sphere entries (the cylinder's
    flat ends lie inside the spheres and never come first).
    """
    axis = prim.b - prim.a
    length = float(np.linalg.norm(axis))
    axis = axis / length
    oa = origin - prim.a
    d_ax = dirs @ axis
    o_ax = float(oa @ axis)
    a = 1.0 - d_ax * d_ax
    b = dirs @ oa - o_ax * d_ax
    c = float(oa @ oa) - o_ax * o_ax - prim.radius**2
    disc = b * b - a * c
    side = (disc >= 0.0) & (a > 1e-12)
    t = (-b - np.sqrt(np.where(side, disc, 0.0))) / np.where(side, a, 1.0)
    y = o_ax + t * d_ax
    t_side = np.where(side & (t > 0.0) & (y >= 0.0) & (y <= length), t, np.inf)
    t_a = _intersect_sphere(origin, dirs, prim.a, prim.radius)
    t_b = _intersect_sphere(origin, dirs, prim.b, prim.radius)
    return np.minimum(t_side, np.minimum(t_a, t_b))


def intersect(origin: np.ndarray, dirs: np.ndarray, prim: Primitive) -> np.ndarray:
    if isinstance(prim, Ellipsoid):
        return intersect_ellipsoid(origin, dirs, prim)
    return intersect_capsule(origin, dirs, prim)


def surface_normal(points: np.ndarray, prim: Primitive) -> np.ndarray:
    """[N, 3] outward unit normals at surface points [N, 3]."""
    if isinstance(prim, Ellipsoid):
        local = (points - prim.center) @ prim.rot / prim.axes**2
        n = local @ prim.rot.T
    else:
        axis = prim.b - prim.a
        length = float(np.linalg.norm(axis))
        axis = axis / length
        y = np.clip((points - prim.a) @ axis, 0.0, length)
        n = points - prim.a - y[:, None] * axis
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _angle_range(lateral: float, depth: float, radius: float) -> tuple[float, float] | None:
    """Range of lateral/depth over a disc (lateral, depth, radius); None if unbounded."""
    rho = math.hypot(lateral, depth)
    if rho <= radius * 1.0001:
        return None
    theta, alpha = math.atan2(lateral, depth), math.asin(radius / rho)
    lo, hi = theta - alpha, theta + alpha
    if lo <= -math.pi / 2 + 1e-6 or hi >= math.pi / 2 - 1e-6:
        return None
    return math.tan(lo), math.tan(hi)


def sphere_pixel_box(
    cam: Camera, center: np.ndarray, radius: float
) -> tuple[int, int, int, int] | None:
    """Conservative pixel box (x0, x1, y0, y1), end-exclusive, of a sphere's projection.

    Exact tangent-plane bounds per image axis, padded by one pixel; None if off-screen.
    """
    x, y, z = cam.w2c[:3, :3] @ center + cam.w2c[:3, 3]
    if z + radius <= 0.0:
        return None
    rx, ry = _angle_range(x, z, radius), _angle_range(y, z, radius)
    x0, x1 = (
        (0, cam.width)
        if rx is None
        else (math.floor(cam.fx * rx[0] + cam.cx) - 1, math.ceil(cam.fx * rx[1] + cam.cx) + 1)
    )
    y0, y1 = (
        (0, cam.height)
        if ry is None
        else (math.floor(cam.fy * ry[0] + cam.cy) - 1, math.ceil(cam.fy * ry[1] + cam.cy) + 1)
    )
    x0, x1 = max(x0, 0), min(x1, cam.width)
    y0, y1 = max(y0, 0), min(y1, cam.height)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, x1, y0, y1


def subray_dirs(cam: Camera, rows: np.ndarray, cols: np.ndarray, ss: int) -> np.ndarray:
    """[len(rows), len(cols), 3] unit world directions of sub-rays on the ss-times finer grid.

    Sub-ray (r, c) sits at pixel coordinates ((c + 0.5) / ss, (r + 0.5) / ss), so each
    pixel's ss x ss grid is centred on the pixel centre (x + 0.5, y + 0.5).
    """
    u = (cols + 0.5) / ss
    v = (rows + 0.5) / ss
    dx = np.broadcast_to(((u - cam.cx) / cam.fx)[None, :], (len(rows), len(cols)))
    dy = np.broadcast_to(((v - cam.cy) / cam.fy)[:, None], (len(rows), len(cols)))
    d = np.stack([dx, dy, np.ones_like(dx)], axis=-1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return d @ cam.w2c[:3, :3]  # camera -> world is the transposed rotation


def cast_rays(
    cam: Camera, prims: Sequence[Primitive], ss: int = SUPERSAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit per sub-ray. Returns t [H*ss, W*ss] (inf = miss), prim index (-1 = miss)."""
    t_buf = np.full((cam.height * ss, cam.width * ss), np.inf)
    id_buf = np.full(t_buf.shape, -1, dtype=np.int16)
    origin = cam.center
    for i, prim in enumerate(prims):
        box = sphere_pixel_box(cam, *prim.bounding_sphere())
        if box is None:
            continue
        x0, x1, y0, y1 = box
        rows = np.arange(y0 * ss, y1 * ss)
        cols = np.arange(x0 * ss, x1 * ss)
        t = intersect(origin, subray_dirs(cam, rows, cols, ss), prim)
        win_t = t_buf[y0 * ss : y1 * ss, x0 * ss : x1 * ss]
        win_id = id_buf[y0 * ss : y1 * ss, x0 * ss : x1 * ss]
        closer = t < win_t
        win_t[closer] = t[closer]
        win_id[closer] = i
    return t_buf, id_buf


def fur_albedo(local: np.ndarray, material: np.ndarray, tex: FurTexture) -> np.ndarray:
    """[N, 3] albedo at mouse-local points [N, 3] with material ids [N]."""
    noise = np.sin(local @ tex.waves.T + tex.phases) @ tex.amps  # roughly +-0.14
    # Darker back, lighter belly: the usual counter-shading of mouse fur.
    belly = np.clip((0.075 - local[:, 2]) / 0.06, -1.0, 1.0)
    shade_fur = 1.0 + noise + 0.18 * belly
    palette = np.stack([tex.fur, tex.skin, tex.eye])
    albedo = palette[material]
    factor = np.where(material == FUR, shade_fur, np.where(material == SKIN, 1 + 0.4 * noise, 1))
    return np.clip(albedo * factor[:, None], 0.0, 1.0)


def shade_hits(
    cam: Camera, mouse: Mouse, t_buf: np.ndarray, id_buf: np.ndarray, ss: int
) -> np.ndarray:
    """[H*ss, W*ss, 3] shaded colour per sub-ray (zero where missed)."""
    colour = np.zeros((*t_buf.shape, 3))
    rows, cols = np.nonzero(id_buf >= 0)
    if rows.size == 0:
        return colour
    dirs = subray_dirs_at(cam, rows, cols, ss)
    points = cam.center + t_buf[rows, cols, None] * dirs
    ids = id_buf[rows, cols]
    normals = np.zeros_like(points)
    materials = np.zeros(len(ids), dtype=np.int64)
    for i in np.unique(ids):
        sel = ids == i
        normals[sel] = surface_normal(points[sel], mouse.primitives[i])
        materials[sel] = mouse.primitives[i].material
    local = ((points - mouse.offset) @ rot_z(mouse.yaw)) / mouse.scale
    light = AMBIENT + DIFFUSE * np.clip(normals @ LIGHT_DIR, 0.0, 1.0)
    rgb = fur_albedo(local, materials, mouse.texture) * light[:, None]
    colour[rows, cols] = np.minimum(rgb, MAX_ALBEDO + 0.05)
    return colour


def subray_dirs_at(cam: Camera, rows: np.ndarray, cols: np.ndarray, ss: int) -> np.ndarray:
    """[N, 3] unit world directions of the sub-rays at paired (rows[i], cols[i])."""
    u = (cols + 0.5) / ss
    v = (rows + 0.5) / ss
    d = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones(len(u))], axis=-1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return d @ cam.w2c[:3, :3]


def render_view(cam: Camera, mouse: Mouse, ss: int = SUPERSAMPLE) -> np.ndarray:
    """[H, W, 4] uint8 RGBA: un-premultiplied mean hit colour (white if none), coverage alpha."""
    t_buf, id_buf = cast_rays(cam, mouse.primitives, ss)
    colour = shade_hits(cam, mouse, t_buf, id_buf, ss)
    h, w = cam.height, cam.width
    hits = (id_buf >= 0).reshape(h, ss, w, ss).sum(axis=(1, 3))
    summed = colour.reshape(h, ss, w, ss, 3).sum(axis=(1, 3))
    mean = np.where(hits[..., None] > 0, summed / np.maximum(hits, 1)[..., None], 1.0)
    rgba = np.empty((h, w, 4), dtype=np.uint8)
    rgba[..., :3] = np.round(np.clip(mean, 0.0, 1.0) * 255.0)
    rgba[..., 3] = np.round(hits * (255.0 / (ss * ss)))
    return rgba


# ----------------------------------------------------------------------------- dataset files


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the bytes of a generated dataset."""

    samples: int
    size: int
    rig: str = "mouse6"
    seed: int = 0
    val_fraction: float = 0.2
    supersample: int = SUPERSAMPLE
    version: int = GENERATOR_VERSION
    test_samples: int = 0

    def params(self) -> dict:
        """The meta file's parameter record; without a test split it is the pre-split record,
        so datasets generated before test splits existed are still recognised as cached."""
        params = asdict(self)
        if not self.test_samples:
            del params["test_samples"]
        return params


def val_count(samples: int, val_fraction: float) -> int:
    """Validation samples: round(N * F), at least 1 when N >= 2 and F > 0, never all."""
    if samples < 2 or val_fraction <= 0:
        return 0
    return min(max(1, round(samples * val_fraction)), samples - 1)


def sample_name(index: int) -> str:
    return f"{index:06d}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, durable=False)  # the dataset's own marker is written last


def _atomic_write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text, durable=False)


def _atomic_write_png(path: Path, pixels: np.ndarray) -> None:
    """Write [H, W, 3|4] uint8 as RGB/RGBA PNG via a temp file, so no half PNG survives."""
    with atomic_path(path, durable=False) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")


def cameras_json(sample_id: str, cams: Sequence[Camera]) -> dict:
    """The opencv_cameras.json payload for one sample."""
    frames = [
        {
            "w": cam.width,
            "h": cam.height,
            "fx": float(cam.fx),
            "fy": float(cam.fy),
            "cx": float(cam.cx),
            "cy": float(cam.cy),
            "w2c": [[float(v) for v in row] for row in cam.w2c],
            "file_path": f"images/cam_{k:02d}.png",
        }
        for k, cam in enumerate(cams)
    ]
    return {"id": sample_id, "frames": frames}


def write_sample(
    folder: Path, sample_id: str, cams: Sequence[Camera], mouse: Mouse, ss: int = SUPERSAMPLE
) -> list[float]:
    """Render and write one sample; returns the per-view foreground fractions.

    The JSON is written after all PNGs, so its presence marks a complete sample.
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    fractions = []
    for k, cam in enumerate(cams):
        rgba = render_view(cam, mouse, ss)
        _atomic_write_png(folder / "images" / f"cam_{k:02d}.png", rgba)
        fractions.append(float(rgba[..., 3].mean() / 255.0))
    payload = json.dumps(cameras_json(sample_id, cams), indent=1)
    _atomic_write_text(folder / "opencv_cameras.json", payload)
    return fractions


def read_sample_fractions(folder: Path) -> list[float]:
    """Per-view foreground fractions of an already written sample."""
    meta = json.loads((folder / "opencv_cameras.json").read_text())
    out = []
    for frame in meta["frames"]:
        with Image.open(folder / frame["file_path"]) as im:
            out.append(float(np.asarray(im)[..., 3].mean() / 255.0))
    return out


def _read_meta(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / META_NAME).read_text())
    except (OSError, ValueError):
        return None


def _remove_stale_samples(samples_dir: Path, keep: int) -> None:
    """Delete generator-named sample folders with index >= keep (from a larger old run)."""
    if not samples_dir.is_dir():
        return
    for child in samples_dir.iterdir():
        if child.is_dir() and re.fullmatch(r"\d{6}", child.name) and int(child.name) >= keep:
            shutil.rmtree(child)


def _summary(
    out_dir: Path, cfg: SyntheticConfig, fractions: list[list[float]], seconds: float, cached: bool
) -> dict:
    flat = np.asarray(fractions, dtype=np.float64).reshape(-1)
    n_val = val_count(cfg.samples, cfg.val_fraction)
    summary = {
        "out_dir": str(out_dir),
        "train_list": str(out_dir / TRAIN_LIST),
        "val_list": str(out_dir / VAL_LIST),
        "num_train": cfg.samples - n_val,
        "num_val": n_val,
        "mean_foreground": float(flat.mean()) if flat.size else 0.0,
        "min_view_foreground": float(flat.min()) if flat.size else 0.0,
        "max_view_foreground": float(flat.max()) if flat.size else 0.0,
        "per_camera_foreground": np.asarray(fractions).mean(axis=0).tolist() if flat.size else [],
        "seconds": seconds,
        "cached": cached,
    }
    if cfg.test_samples:
        summary.update(test_list=str(out_dir / TEST_LIST), num_test=cfg.test_samples)
    return summary


_PATH_KEYS = ("out_dir", "train_list", "val_list", "test_list")


def generate_dataset(
    out_dir: str | os.PathLike,
    samples: int,
    size: int,
    rig: str = "mouse6",
    seed: int = 0,
    val_fraction: float = 0.2,
    test_samples: int = 0,
) -> dict:
    """Generate (or reuse) a synthetic mouse dataset in `out_dir`.

    `test_samples` > 0 also writes a held-out test split (data_test.txt, test_samples/) of
    that many samples, disjoint from train and val (see the module docstring).
    Returns a summary dict: train_list / val_list (absolute paths), num_train, num_val,
    test_list and num_test (only with a test split),
    mean_foreground (mean alpha over all pixels, views and samples), min/max view
    foreground, per_camera_foreground, seconds, cached (True when an identical complete
    dataset was already there). An interrupted run with the same parameters resumes,
    skipping samples whose JSON (written last) exists.
    """
    if samples < 1 or size < 1:
        raise ValueError("samples and size must be positive")
    if test_samples < 0:
        raise ValueError(f"test_samples must be >= 0, got {test_samples}")
    rig_specs(rig)  # validate the name before touching the disk
    out = Path(out_dir).resolve()
    cfg = SyntheticConfig(
        samples, size, rig, seed, float(val_fraction), test_samples=int(test_samples)
    )
    # Studies started together share one cache folder: one writes, the others wait and reuse it.
    with _exclusive_lock(out / ".generate.lock"):
        return _generate_or_reuse(out, cfg)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Block until this process holds an exclusive lock on `path` (released on exit or crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _generate_or_reuse(out: Path, cfg: SyntheticConfig) -> dict:
    samples, size, rig, seed, val_fraction = (
        cfg.samples,
        cfg.size,
        cfg.rig,
        cfg.seed,
        cfg.val_fraction,
    )
    params = cfg.params()
    meta = _read_meta(out)
    lists = (TRAIN_LIST, VAL_LIST, TEST_LIST) if cfg.test_samples else (TRAIN_LIST, VAL_LIST)
    lists_exist = all((out / name).is_file() for name in lists)
    if meta and meta.get("params") == params and meta.get("complete") and lists_exist:
        summary = dict(meta["summary"], seconds=0.0, cached=True)
        paths = {"out_dir": str(out), "train_list": str(out / TRAIN_LIST)}
        paths["val_list"] = str(out / VAL_LIST)
        if cfg.test_samples:
            paths["test_list"] = str(out / TEST_LIST)
        return dict(summary, **paths)

    start = time.perf_counter()
    resume = bool(meta) and meta.get("params") == params
    # Remove the old lists first so a half-regenerated folder never looks complete.
    for name in (TRAIN_LIST, VAL_LIST, TEST_LIST):
        (out / name).unlink(missing_ok=True)
    _atomic_write_text(out / META_NAME, json.dumps({"params": params, "complete": False}))
    samples_dir = out / "samples"
    _remove_stale_samples(samples_dir, samples if resume else 0)
    test_dir = out / TEST_DIR
    _remove_stale_samples(test_dir, cfg.test_samples if resume else 0)

    cams = make_rig(rig, size)
    fractions = []
    for k in range(samples):
        folder = samples_dir / sample_name(k)
        if resume and (folder / "opencv_cameras.json").is_file():
            fractions.append(read_sample_fractions(folder))
            continue
        mouse = sample_mouse(sample_rng(seed, k))
        fractions.append(write_sample(folder, sample_name(k), cams, mouse, cfg.supersample))

    test_fractions = []
    for k in range(cfg.test_samples):
        folder = test_dir / sample_name(k)
        if resume and (folder / "opencv_cameras.json").is_file():
            test_fractions.append(read_sample_fractions(folder))
            continue
        mouse = sample_mouse(test_sample_rng(seed, k))
        sample_id = f"test_{sample_name(k)}"
        test_fractions.append(write_sample(folder, sample_id, cams, mouse, cfg.supersample))

    # Summary statistics stay those of train + val, as before test splits existed.
    summary = _summary(out, cfg, fractions, time.perf_counter() - start, cached=False)
    if test_fractions:
        summary["test_mean_foreground"] = float(np.mean(test_fractions))
    stored = {k: v for k, v in summary.items() if k not in _PATH_KEYS}
    _atomic_write_text(
        out / META_NAME,
        json.dumps({"params": params, "complete": True, "summary": stored}, indent=1),
    )
    n_val = val_count(samples, val_fraction)
    names = [f"samples/{sample_name(k)}" for k in range(samples)]
    # The last samples go to validation; samples are i.i.d., so any split is unbiased.
    _atomic_write_text(out / VAL_LIST, "".join(f"{n}\n" for n in names[samples - n_val :]))
    if cfg.test_samples:
        test_names = [f"{TEST_DIR}/{sample_name(k)}" for k in range(cfg.test_samples)]
        _atomic_write_text(out / TEST_LIST, "".join(f"{n}\n" for n in test_names))
    # The training list is written last: with it, the lists of a complete dataset all exist.
    _atomic_write_text(out / TRAIN_LIST, "".join(f"{n}\n" for n in names[: samples - n_val]))
    return summary


# ----------------------------------------------------------------------------- contact sheet


def _list_entries(list_file: Path) -> list[str]:
    if not list_file.is_file():
        return []
    return [line.strip() for line in list_file.read_text().splitlines() if line.strip()]


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 from [H, W, 4] uint8 un-premultiplied RGBA."""
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    rgb = rgba[..., :3].astype(np.float64) * a + 255.0 * (1.0 - a)
    return np.round(rgb).astype(np.uint8)


def contact_sheet(
    dataset_dir: str | os.PathLike, out_png: str | os.PathLike, samples: int = 4
) -> Path:
    """Tile the six views of the first `samples` samples (rows) into one PNG on white."""
    root = Path(dataset_dir)
    entries = (_list_entries(root / TRAIN_LIST) + _list_entries(root / VAL_LIST))[:samples]
    if not entries:
        raise FileNotFoundError(f"no samples listed in {root}")
    rows = []
    gap = 2
    for entry in entries:
        folder = root / entry
        meta = json.loads((folder / "opencv_cameras.json").read_text())
        tiles = []
        for frame in meta["frames"]:
            with Image.open(folder / frame["file_path"]) as im:
                tiles.append(composite_on_white(np.asarray(im.convert("RGBA"))))
        h = tiles[0].shape[0]
        sep = np.full((h, gap, 3), 200, dtype=np.uint8)
        row = [t for tile in tiles for t in (tile, sep)][:-1]
        rows.append(np.concatenate(row, axis=1))
    width = rows[0].shape[1]
    hsep = np.full((gap, width, 3), 200, dtype=np.uint8)
    sheet = np.concatenate([r for row in rows for r in (row, hsep)][:-1], axis=0)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_png(out, sheet)
    return out


# ----------------------------------------------------------------------------- CLI


CLI_EPILOG = """\
writes, in OUT:
  data_train.txt, data_val.txt   FaceLift list files (sample folders relative to OUT)
  data_test.txt                  the held-out test split (only with --test-samples > 0)
  samples/NNNNNN/                opencv_cameras.json + images/cam_XX.png (RGBA) per sample
  test_samples/NNNNNN/           the test samples, same layout
  synthetic_meta.json            parameters and foreground statistics
An identical existing dataset is reused; an interrupted one is resumed.
example:
  python -m trainables.gslrm.data.synthetic --out data/syn --samples 48 --size 64 --test-samples 16
"""


def _at_least(minimum: int) -> typing.Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainables.gslrm.data.synthetic",
        description="Write a synthetic mouse dataset in the FaceLift / GS-LRM on-disk format.",
        epilog=CLI_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="dataset folder (created if missing)")
    p.add_argument(
        "--samples",
        type=_at_least(1),
        required=True,
        help="train + val samples (mouse poses), each seen by every camera of the rig",
    )
    p.add_argument(
        "--size", type=_at_least(1), required=True, help="image side in pixels (square images)"
    )
    p.add_argument(
        "--rig",
        choices=RIGS,
        default="mouse6",
        help="mouse6: the uneven 6-camera arena rig; turntable6: an even 60-degree ring "
        "(default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of --samples that goes to data_val.txt (default: %(default)s)",
    )
    p.add_argument(
        "--test-samples",
        type=_at_least(0),
        default=0,
        help="extra held-out samples written to data_test.txt, disjoint from train and val "
        "(default: %(default)s, no test split)",
    )
    p.add_argument("--contact-sheet", default=None, help="also write a contact sheet PNG here")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = generate_dataset(
        args.out,
        args.samples,
        args.size,
        args.rig,
        args.seed,
        args.val_fraction,
        test_samples=args.test_samples,
    )
    if args.contact_sheet:
        contact_sheet(args.out, args.contact_sheet)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
