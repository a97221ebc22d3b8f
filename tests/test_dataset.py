"""The two dataset types: view order, input/target split, item layout, rig normalisation."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.test_reader import look_at_c2w
from trainables.gslrm.config import TrainerConfig, apply_overrides
from trainables.gslrm.data.dataset import MultiViewDataset, select_views, split_views
from trainables.gslrm.data.reader import normalize_rig

SIZE = 16
N_CAMERAS = 8  # more views on disk than num_views, so random selection also picks subsets


def tilted_rig(n: int, normal: Any, radii: Any = None, up_sign: float = 1.0) -> np.ndarray:
    """[n, 4, 4] c2w of cameras on a circle in the plane through the origin with `normal`,
    all looking at the origin; their image "up" (-y) leans towards up_sign * normal."""
    normal = np.asarray(normal, dtype=np.float64)
    normal /= np.linalg.norm(normal)
    u = np.cross(normal, [1.0, 0, 0] if abs(normal[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    radii = np.full(n, 2.0) if radii is None else np.asarray(radii, dtype=np.float64)
    # uneven azimuths like the mouse rig, so no symmetry hides a wrong rotation
    angles = np.radians([17.0, 30.5, 76.1, 98.8, 137.0, 168.4, 250.0, 300.0][:n])
    return np.stack(
        [
            look_at_c2w(r * (math.cos(a) * u + math.sin(a) * v), np.zeros(3), up_sign * normal)
            for r, a in zip(radii, angles, strict=True)
        ]
    )


def write_dataset(root: Path, n_samples: int = 3, n_cameras: int = N_CAMERAS) -> Path:
    """Samples whose view k is a flat colour with red = 10 k + 5 and fx = 20 + k, so an item's
    images and cameras can be traced back to the physical camera they came from."""
    rig = tilted_rig(n_cameras, [0.2, -0.3, 1.0])
    entries = []
    for s in range(n_samples):
        folder = root / f"s{s}"
        (folder / "images").mkdir(parents=True)
        frames = []
        for k in range(n_cameras):
            rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
            rgba[...] = (10 * k + 5, 20 * s, 200, 255)
            rgba[:4, :4, 3] = 0  # a transparent corner, so target_alpha is not all ones
            Image.fromarray(rgba, "RGBA").save(folder / "images" / f"{k}.png")
            frames.append(
                {
                    "w": SIZE,
                    "h": SIZE,
                    "fx": 20.0 + k,
                    "fy": 20.0 + k,
                    "cx": 8.0,
                    "cy": 8.0,
                    "w2c": np.linalg.inv(rig[k]).tolist(),
                    "file_path": f"images/{k}.png",
                }
            )
        (folder / "opencv_cameras.json").write_text(
            json.dumps({"id": folder.name, "frames": frames})
        )
        entries.append(folder.name)
    list_file = root / "data_train.txt"
    list_file.write_text("\n".join(entries) + "\n")
    return list_file


@pytest.fixture(scope="module")
def list_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


def make_config(tmp_path: Path, **overrides: Any) -> TrainerConfig:
    base = {
        "model.image_tokenizer.image_size": SIZE,
        "model.image_tokenizer.patch_size": 8,
        "model.gaussians.downsample": 1,
        "training.dataset.num_views": 6,
        "training.dataset.num_input_views": 4,
        "training.dataset.cache_dir": str(tmp_path / "cache"),
    }
    return apply_overrides(
        TrainerConfig(), base | {k.replace("__", "."): v for k, v in overrides.items()}
    )


def view_ids_of_images(images: torch.Tensor) -> list[int]:
    """Camera index recovered from the red value (10 k + 5) of an opaque pixel."""
    return [round((float(img[0, 8, 8]) * 255 - 5) / 10) for img in images]


def all_ids(item: dict[str, torch.Tensor]) -> list[int]:
    return item["input_view_ids"].tolist() + item["target_view_ids"].tolist()


# ----------------------------------------------------------------------------- view order


def test_mouse_dataset_uses_rig_order_every_item_and_epoch(list_file: Path, tmp_path: Path) -> None:
    ds = MultiViewDataset(list_file, make_config(tmp_path, mouse__use_mouse_dataset=True))
    for epoch, index in itertools.product(range(3), range(len(ds))):
        ds.set_epoch(epoch)
        item = ds[index]
        assert item["input_view_ids"].tolist() == [0, 1, 2, 3]
        assert item["target_view_ids"].tolist() == [0, 1, 2, 3, 4, 5]
        assert view_ids_of_images(item["target_images"]) == [0, 1, 2, 3, 4, 5]


def test_random_dataset_varies_but_is_reproducible(list_file: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, mouse__use_mouse_dataset=False)
    ds, again = MultiViewDataset(list_file, config), MultiViewDataset(list_file, config)
    seen = {}
    for epoch in range(4):
        ds.set_epoch(epoch)
        again.set_epoch(epoch)
        for index in range(len(ds)):
            ids = ds[index]["target_view_ids"].tolist()
            assert len(set(ids)) == 6 and set(ids) <= set(range(N_CAMERAS))
            # same seed, epoch and index: the same views in the same order, in any process
            assert again[index]["target_view_ids"].tolist() == ids
            seen[epoch, index] = tuple(ids)
    # 12 draws of 6 ordered views out of 8 (20160 possibilities): collisions would mean no shuffle
    assert len(set(seen.values())) == len(seen)
    assert any(list(ids) != sorted(ids) for ids in seen.values())
    assert any(set(ids) != set(range(6)) for ids in seen.values())  # subsets, not only 0..5
    # across epochs the same item changes
    assert seen[0, 0] != seen[1, 0]

    other_seed = MultiViewDataset(
        list_file, make_config(tmp_path, mouse__use_mouse_dataset=False, training__runtime__seed=1)
    )
    assert [tuple(other_seed[i]["target_view_ids"].tolist()) for i in range(3)] != [
        seen[0, i] for i in range(3)
    ]


def test_random_dataset_keeps_images_and_cameras_paired(list_file: Path, tmp_path: Path) -> None:
    ds = MultiViewDataset(list_file, make_config(tmp_path, mouse__use_mouse_dataset=False))
    reference = MultiViewDataset(
        list_file,
        make_config(
            tmp_path,
            mouse__use_mouse_dataset=True,
            training__dataset__num_views=8,
            training__dataset__num_input_views=1,
        ),
    )
    c2w_by_view = reference[1]["target_c2w"]
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[1]
        for prefix in ("input", "target"):
            ids = item[f"{prefix}_view_ids"].tolist()
            assert view_ids_of_images(item[f"{prefix}_images"]) == ids
            assert item[f"{prefix}_intrinsics"][:, 0].tolist() == [20.0 + k for k in ids]
            torch.testing.assert_close(item[f"{prefix}_c2w"], c2w_by_view[ids])


def test_select_views_directly() -> None:
    rng = np.random.default_rng(0)
    assert select_views(6, 6, True, rng).tolist() == [0, 1, 2, 3, 4, 5]
    assert select_views(32, 4, True, rng).tolist() == [0, 1, 2, 3]
    picked = select_views(32, 6, False, rng)
    assert picked.shape == (6,) and len(set(picked.tolist())) == 6 and picked.max() < 32


# ----------------------------------------------------------------------------- split


@pytest.mark.parametrize("rig_order", [True, False])
def test_split_with_target_has_input(list_file: Path, tmp_path: Path, rig_order: bool) -> None:
    config = make_config(
        tmp_path, mouse__use_mouse_dataset=rig_order, training__dataset__target_has_input=True
    )
    item = MultiViewDataset(list_file, config)[2]
    assert item["input_images"].shape[0] == 4 and item["target_images"].shape[0] == 6
    # the targets start with the inputs, then the remaining views
    assert item["target_view_ids"][:4].tolist() == item["input_view_ids"].tolist()
    torch.testing.assert_close(item["target_images"][:4], item["input_images"])
    torch.testing.assert_close(item["target_c2w"][:4], item["input_c2w"])
    torch.testing.assert_close(item["target_intrinsics"][:4], item["input_intrinsics"])


@pytest.mark.parametrize("rig_order", [True, False])
def test_split_without_target_has_input(list_file: Path, tmp_path: Path, rig_order: bool) -> None:
    config = make_config(
        tmp_path, mouse__use_mouse_dataset=rig_order, training__dataset__target_has_input=False
    )
    item = MultiViewDataset(list_file, config)[2]
    inputs, targets = item["input_view_ids"].tolist(), item["target_view_ids"].tolist()
    assert len(inputs) == 4 and len(targets) == 2 and not set(inputs) & set(targets)
    assert item["target_images"].shape[0] == item["target_alpha"].shape[0] == 2
    assert view_ids_of_images(item["target_images"]) == targets
    if rig_order:
        assert (inputs, targets) == ([0, 1, 2, 3], [4, 5])


def test_split_views_directly() -> None:
    ids = np.array([5, 2, 7, 0, 3])
    inputs, targets = split_views(ids, 2, True)
    assert inputs.tolist() == [5, 2] and targets.tolist() == [5, 2, 7, 0, 3]
    inputs, targets = split_views(ids, 2, False)
    assert inputs.tolist() == [5, 2] and targets.tolist() == [7, 0, 3]


# ----------------------------------------------------------------------------- item layout


def test_item_shapes_and_dtypes(list_file: Path, tmp_path: Path) -> None:
    ds = MultiViewDataset(list_file, make_config(tmp_path, mouse__use_mouse_dataset=True))
    item = ds[1]
    vi, vt, h = 4, 6, SIZE
    expected = {
        "input_images": ((vi, 3, h, h), torch.float32),
        "input_intrinsics": ((vi, 4), torch.float32),
        "input_c2w": ((vi, 4, 4), torch.float32),
        "input_view_ids": ((vi,), torch.int64),
        "target_images": ((vt, 3, h, h), torch.float32),
        "target_alpha": ((vt, 1, h, h), torch.float32),
        "target_intrinsics": ((vt, 4), torch.float32),
        "target_c2w": ((vt, 4, 4), torch.float32),
        "target_view_ids": ((vt,), torch.int64),
        "background": ((3,), torch.float32),
        "sample_index": ((), torch.int64),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in item.items()} == expected
    assert item["sample_index"].item() == 1
    for key in ("input_images", "target_images", "target_alpha"):
        assert 0.0 <= item[key].min() and item[key].max() <= 1.0
    assert (
        item["target_alpha"][:, 0, :4, :4].eq(0).all()
        and item["target_alpha"][:, 0, 8:, 8:].eq(1).all()
    )
    # sample 1 has green = 20 / 255 in every opaque pixel
    torch.testing.assert_close(item["input_images"][:, 1, 8, 8], torch.full((vi,), 20 / 255))

    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert batch["input_images"].shape == (2, vi, 3, h, h)
    assert batch["sample_index"].tolist() == [0, 1]


def test_max_items_and_len(list_file: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert len(MultiViewDataset(list_file, config)) == 3
    assert len(MultiViewDataset(list_file, config, max_items=2)) == 2


# ----------------------------------------------------------------------------- normalize_rig


def _axes_and_centre_angles(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise cosines between optical axes, and between camera centre directions."""
    axes = c2w[:, :3, 2]
    centres = c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=1, keepdims=True)
    return axes @ axes.T, centres @ centres.T


@pytest.mark.parametrize(
    "normal",
    [[0.2, -0.3, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, -0.2], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]],
)
def test_normalize_rig(normal: list[float]) -> None:
    c2w = tilted_rig(6, normal, radii=[2.0, 2.6, 3.1, 3.4, 2.3, 2.8])
    out = normalize_rig(c2w, target_distance=2.7)
    centres = out[:, :3, 3]
    # the rig plane (through the origin here) becomes z = 0, so the normal is the z axis ...
    np.testing.assert_allclose(centres[:, 2], 0.0, atol=1e-9)
    # ... pointing +Z: the cameras' mean "up" (-y in OpenCV) leans towards +Z
    assert (-out[:, :3, 1]).mean(0)[2] > 0.5
    assert np.linalg.norm(centres, axis=1).mean() == pytest.approx(2.7)
    # one similarity for all cameras: relative geometry and distance ratios are kept
    for before, after in zip(
        _axes_and_centre_angles(c2w), _axes_and_centre_angles(out), strict=True
    ):
        np.testing.assert_allclose(after, before, atol=1e-9)
    dist_in, dist_out = np.linalg.norm(c2w[:, :3, 3], axis=1), np.linalg.norm(centres, axis=1)
    np.testing.assert_allclose(dist_out / dist_in, dist_out[0] / dist_in[0])
    # cameras still look at the (unmoved) origin, with proper rotations
    np.testing.assert_allclose(
        np.einsum("nij,nj->ni", out[:, :3, :3].transpose(0, 2, 1), -centres)[:, :2], 0.0, atol=1e-9
    )
    for r in out[:, :3, :3]:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_array_equal(out[:, 3], np.tile([0, 0, 0, 1.0], (6, 1)))


def test_normalize_rig_sign_follows_camera_up() -> None:
    # The same centres with cameras upside down: the rig normal flips to keep "up" on +Z.
    upright = normalize_rig(tilted_rig(6, [0.0, 0.0, 1.0], up_sign=1.0), 2.7)
    flipped = normalize_rig(tilted_rig(6, [0.0, 0.0, 1.0], up_sign=-1.0), 2.7)
    assert (-upright[:, :3, 1]).mean(0)[2] > 0 and (-flipped[:, :3, 1]).mean(0)[2] > 0
    # flipping is a half turn: centres' in-plane positions mirror in one axis
    np.testing.assert_allclose(np.abs(flipped[:, :2, 3]), np.abs(upright[:, :2, 3]), atol=1e-9)


def test_normalize_rig_identity_for_a_rig_already_z_up() -> None:
    c2w = tilted_rig(6, [0.0, 0.0, 1.0])  # radius 2
    out = normalize_rig(c2w, 3.0)
    np.testing.assert_allclose(out[:, :3, :3], c2w[:, :3, :3], atol=1e-12)
    np.testing.assert_allclose(out[:, :3, 3], c2w[:, :3, 3] * 1.5, atol=1e-12)


def test_dataset_applies_normalize_rig(list_file: Path, tmp_path: Path) -> None:
    plain = MultiViewDataset(
        list_file,
        make_config(tmp_path, training__dataset__num_views=8, training__dataset__num_input_views=1),
    )[0]
    normed = MultiViewDataset(
        list_file,
        make_config(
            tmp_path,
            training__dataset__num_views=8,
            training__dataset__num_input_views=1,
            mouse__normalize_cameras=True,
            mouse__target_camera_distance=1.5,
        ),
    )[0]
    expected = normalize_rig(plain["target_c2w"].double().numpy(), 1.5)
    np.testing.assert_allclose(normed["target_c2w"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(normed["target_c2w"][:, :3, 3].numpy(), axis=1), 1.5, atol=1e-5
    )
    torch.testing.assert_close(normed["target_images"], plain["target_images"])  # images untouched


# ----------------------------------------------------------------------------- generated data


def test_generated_mouse_dataset(tmp_path: Path) -> None:
    from trainables.gslrm.data import synthetic  # always present: a broken import must fail

    summary = synthetic.generate_dataset(tmp_path / "gen", samples=4, size=32, rig="mouse6", seed=3)
    config = make_config(
        tmp_path,
        model__image_tokenizer__image_size=32,
        mouse__use_mouse_dataset=True,
        training__dataset__num_input_views=5,
    )
    ds = MultiViewDataset(summary["train_list"], config)
    assert len(ds) == summary["num_train"] == 3
    for index in range(len(ds)):
        item = ds[index]
        assert item["target_view_ids"].tolist() == [0, 1, 2, 3, 4, 5]
        assert item["target_images"].shape == (6, 3, 32, 32)
        fg = (item["target_alpha"] > 0.5).float().mean().item()
        assert 0.005 < fg < 0.3  # a small mouse on a white background
        # composited on white: background pixels are exactly white
        bg_pixels = item["target_images"].permute(1, 0, 2, 3)[:, item["target_alpha"][:, 0] == 0]
        assert bg_pixels.numel() > 0 and bg_pixels.eq(1.0).all()
