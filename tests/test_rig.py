"""Rig geometry: the one look-at convention the generator, the tests and the benchmarks share."""

from __future__ import annotations

import numpy as np

from trainables.gslrm.rig import look_at_c2w, look_at_w2c, orbit_center


def test_the_target_is_straight_ahead_and_world_up_is_image_up() -> None:
    center, target = np.array([2.0, -1.0, 0.5]), np.array([0.1, 0.2, 0.0])
    w2c = look_at_w2c(center, target)
    in_camera = w2c @ np.append(target, 1.0)
    assert np.allclose(in_camera[:2], 0.0) and in_camera[2] > 0  # on the optical axis, in front
    above = w2c @ np.append(target + [0.0, 0.0, 0.1], 1.0)
    assert above[1] < 0  # world +Z appears up in the image (OpenCV y points down)
    assert np.allclose(look_at_c2w(center, target) @ w2c, np.eye(4), atol=1e-12)


def test_a_camera_looking_straight_down_still_has_a_basis() -> None:
    w2c = look_at_w2c([0.0, 0.0, 3.0], [0.0, 0.0, 0.0])
    assert np.allclose(w2c[:3, :3] @ w2c[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.allclose(w2c[2, :3], [0.0, 0.0, -1.0])


def test_orbit_center_angles() -> None:
    assert np.allclose(orbit_center(2.0, 90.0, 0.0), [0.0, 2.0, 0.0], atol=1e-12)
    assert np.allclose(orbit_center(2.0, 0.0, 90.0), [0.0, 0.0, 2.0], atol=1e-12)
