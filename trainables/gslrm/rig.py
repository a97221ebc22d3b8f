"""Camera rig geometry: where a camera sits and how it is turned, in OpenCV conventions.

World is Z up. A camera's axes are OpenCV's: x right, y down, z forward (the viewing
direction). `look_at_w2c` is the world-to-camera matrix the data format stores
(`opencv_cameras.json` "w2c"), `look_at_c2w` its inverse (what the model and renderer take).
Used by the synthetic data generator and by the tests and benchmarks that place cameras,
so all of them agree on one convention. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

WORLD_UP = (0.0, 0.0, 1.0)
# Replaces WORLD_UP when a camera looks (nearly) straight along it, so the basis stays defined.
_FALLBACK_UP = (0.0, 1.0, 0.0)


def look_at_rotation(
    center: Sequence[float], target: Sequence[float], up: Sequence[float] = WORLD_UP
) -> np.ndarray:
    """[3, 3] rows = the camera's right, down, forward axes in world coordinates.

    center, target, up: [3]. Image "up" follows `up` unless the view is (nearly) parallel
    to it, where world +Y takes its place.
    """
    center, target = np.asarray(center, np.float64), np.asarray(target, np.float64)
    forward = target - center
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, np.float64))
    if np.linalg.norm(right) < 1e-6:
        right = np.cross(forward, np.asarray(_FALLBACK_UP, np.float64))
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def look_at_w2c(
    center: Sequence[float], target: Sequence[float], up: Sequence[float] = WORLD_UP
) -> np.ndarray:
    """[4, 4] OpenCV world-to-camera for a camera at `center` [3] looking at `target` [3]."""
    rot = look_at_rotation(center, target, up)
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ np.asarray(center, np.float64)
    return w2c


def look_at_c2w(
    center: Sequence[float],
    target: Sequence[float] = (0.0, 0.0, 0.0),
    up: Sequence[float] = WORLD_UP,
) -> np.ndarray:
    """[4, 4] OpenCV camera-to-world (columns: right, down, forward, centre); the inverse of
    look_at_w2c."""
    c2w = np.eye(4)
    c2w[:3, :3] = look_at_rotation(center, target, up).T
    c2w[:3, 3] = np.asarray(center, np.float64)
    return c2w


def orbit_center(distance: float, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """[3] position at `distance` from the origin; azimuth from +X towards +Y, elevation up
    from the XY plane, in degrees."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return distance * np.array(
        [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
    )
