"""FaceLift-format reader: hand-written sample folders read back, and every bad file named."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from trainables.gslrm.config import TrainerConfig, apply_overrides
from trainables.gslrm.data import reader
from trainables.gslrm.data.dataset import MultiViewDataset
from trainables.gslrm.data.reader import (
    DataError,
    composite,
    load_view,
    read_list_file,
    read_sample,
    scaled_intrinsics,
)

SIZE = 16


def look_at_c2w(
    centre: Any, target: Any = (0.0, 0.0, 0.0), up: Any = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """OpenCV camera-to-world (x right, y down, z forward) at `centre` looking at `target`."""
    centre, target, up = (np.asarray(v, dtype=np.float64) for v in (centre, target, up))
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, np.cross(z, x), z, centre
    return c2w


def ring_c2w(n: int, radius: float = 2.0, elevation_deg: float = 20.0) -> list[np.ndarray]:
    el = math.radians(elevation_deg)
    return [
        look_at_c2w(
            [
                radius * math.cos(el) * math.cos(a),
                radius * math.cos(el) * math.sin(a),
                radius * math.sin(el),
            ]
        )
        for a in np.linspace(0, 2 * math.pi, n, endpoint=False)
    ]


def view_pixels(k: int, size: int = SIZE) -> np.ndarray:
    """White transparent background with an opaque square whose red value encodes the view."""
    rgba = np.full((size, size, 4), 255, dtype=np.uint8)
    rgba[..., 3] = 0
    q = size // 4
    rgba[q : 3 * q, q : 3 * q] = (10 * k + 5, 40, 80, 255)
    return rgba


def write_sample(
    folder: Path, n_views: int = 2, size: int = SIZE, pixels: list[np.ndarray] | None = None
) -> dict:
    """A sample folder with `n_views` RGBA views on a ring; returns the camera JSON written."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for k, c2w in enumerate(ring_c2w(n_views)):
        name = f"images/cam_{k:02d}.png"
        Image.fromarray(pixels[k] if pixels else view_pixels(k, size), "RGBA").save(folder / name)
        frames.append(
            {
                "w": size,
                "h": size,
                "fx": 20.0 + k,
                "fy": 21.0 + k,
                "cx": 7.5,
                "cy": 8.0,
                "w2c": np.linalg.inv(c2w).tolist(),
                "file_path": name,
            }
        )
    data = {"id": folder.name, "frames": frames}
    write_json(folder, data)
    return data


def write_json(folder: Path, data: Any) -> Path:
    path = folder / reader.CAMERA_FILE
    path.write_text(json.dumps(data))
    return path


def write_list(path: Path, entries: list[str | Path]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e}\n" for e in entries))
    return path


def dataset_config(**overrides: Any) -> TrainerConfig:
    base = {
        "model.image_tokenizer.image_size": SIZE,
        "model.image_tokenizer.patch_size": 8,
        "model.gaussians.downsample": 1,
        "training.dataset.num_views": 2,
        "training.dataset.num_input_views": 1,
        "mouse.use_mouse_dataset": True,
    }
    return apply_overrides(
        TrainerConfig(), base | {k.replace("__", "."): v for k, v in overrides.items()}
    )


# ----------------------------------------------------------------------------- good samples


def test_hand_written_sample_reads_back(tmp_path: Path) -> None:
    folder = tmp_path / "s0"
    write_sample(folder, n_views=3)
    sample = read_sample(folder)
    assert sample.sample_id == "s0" and sample.folder == folder and len(sample.frames) == 3
    for k, frame in enumerate(sample.frames):
        assert (frame.width, frame.height) == (SIZE, SIZE)
        assert frame.intrinsics == (20.0 + k, 21.0 + k, 7.5, 8.0)
        assert frame.image_path == folder / f"images/cam_{k:02d}.png"
        np.testing.assert_allclose(frame.w2c, np.linalg.inv(ring_c2w(3)[k]), atol=1e-12)


def test_c2w_is_the_inverse_of_w2c(tmp_path: Path) -> None:
    # A camera at (0, -3, 0) looking at the origin along +y, world z up: hand-computed axes.
    c2w = np.array([[1.0, 0, 0, 0], [0, 0, 1, -3], [0, -1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(look_at_c2w([0, -3, 0]), c2w, atol=1e-12)
    folder = tmp_path / "s0"
    data = write_sample(folder, n_views=2)
    data["frames"][0]["w2c"] = np.linalg.inv(c2w).tolist()
    write_json(folder, data)
    item = MultiViewDataset(
        write_list(tmp_path / "list.txt", ["s0"]),
        dataset_config(training__dataset__cache_dir=str(tmp_path / "c")),
    )[0]
    got = item["input_c2w"][0].double().numpy()
    np.testing.assert_allclose(got, c2w, atol=1e-6)
    assert got[:3, 3].tolist() == pytest.approx([0, -3, 0])  # camera centre
    assert got[:3, 2].tolist() == pytest.approx([0, 1, 0])  # optical axis points at the origin


def test_facelift_style_sample(tmp_path: Path) -> None:
    """32 views of 512 px on FaceLift's turntable (radius 2.7, 20 deg), extra per-frame keys."""
    folder = tmp_path / "human_0001"
    (folder / "images").mkdir(parents=True)
    rgba = np.full((512, 512, 4), 255, dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[240:272, 240:272] = (90, 60, 30, 255)
    Image.fromarray(rgba, "RGBA").save(folder / "images" / "cam_0.png")
    png = (folder / "images" / "cam_0.png").read_bytes()
    frames = []
    for k, c2w in enumerate(ring_c2w(32, radius=2.7, elevation_deg=20.0)):
        (folder / "images" / f"cam_{k}.png").write_bytes(png)
        frames.append(
            {
                "w": 512,
                "h": 512,
                "fx": 548.99,
                "fy": 548.99,
                "cx": 256.0,
                "cy": 256.0,
                "w2c": np.linalg.inv(c2w).tolist(),
                "file_path": f"images/cam_{k}.png",
                "blender_camera_name": f"Camera.{k:03d}",
                "camera_angle_x": 0.8575,
            }
        )
    write_json(folder, {"id": "human_0001", "frames": frames, "scene_scale": 1.0})

    sample = read_sample(folder)
    assert len(sample.frames) == 32
    centres = np.stack([np.linalg.inv(f.w2c)[:3, 3] for f in sample.frames])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2.7, atol=1e-9)
    np.testing.assert_allclose(np.degrees(np.arcsin(centres[:, 2] / 2.7)), 20.0, atol=1e-9)

    config = dataset_config(
        model__image_tokenizer__image_size=64,
        training__dataset__num_views=6,
        training__dataset__num_input_views=5,
        mouse__use_mouse_dataset=False,
        training__dataset__cache_dir=str(tmp_path / "cache"),
    )
    item = MultiViewDataset(write_list(tmp_path / "data_train.txt", [folder.name]), config)[0]
    assert item["target_images"].shape == (6, 3, 64, 64)
    np.testing.assert_allclose(
        item["target_intrinsics"][0].numpy(), [548.99 / 8, 548.99 / 8, 32.0, 32.0], rtol=1e-6
    )
    # 512 -> 64 shrinks the 32 px square to 4 px: its centre is still the square's colour
    np.testing.assert_allclose(
        item["target_images"][0, :, 32, 32].numpy(), np.array([90, 60, 30]) / 255, atol=2 / 255
    )
    assert item["target_alpha"][0, 0, 0, 0] == 0 and item["target_alpha"][0, 0, 32, 32] == 1


def test_list_entries_relative_to_list_file_and_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sample(tmp_path / "data" / "samples" / "a")
    write_sample(tmp_path / "data" / "samples" / "b")
    list_file = write_list(
        tmp_path / "data" / "lists" / "train.txt",
        [
            "# comment lines and blank lines are skipped",
            "../samples/a",
            "",
            str(tmp_path / "data" / "samples" / "b"),
        ],
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # From this CWD "../samples/a" does not exist: only list-file-relative resolution finds it.
    monkeypatch.chdir(elsewhere)
    assert not Path("../samples/a").exists()
    folders = read_list_file(Path(os.path.relpath(list_file, elsewhere)))
    assert [f.resolve() for f in folders] == [
        (tmp_path / "data" / "samples" / n).resolve() for n in "ab"
    ]
    assert [read_sample(f).sample_id for f in folders] == ["a", "b"]
    dataset = MultiViewDataset(list_file, dataset_config())
    assert len(dataset) == 2 and dataset[1]["input_images"].shape == (1, 3, SIZE, SIZE)


def test_intrinsics_scale_with_resize(tmp_path: Path) -> None:
    write_sample(tmp_path / "s0", n_views=2, size=64)
    frame = read_sample(tmp_path / "s0").frames[1]  # fx 21, fy 22, cx 7.5, cy 8 at 64 px
    np.testing.assert_allclose(scaled_intrinsics(frame, 32), [10.5, 11.0, 3.75, 4.0])
    np.testing.assert_allclose(scaled_intrinsics(frame, 64), [21.0, 22.0, 7.5, 8.0])
    np.testing.assert_allclose(scaled_intrinsics(frame, 128), [42.0, 44.0, 15.0, 16.0])
    wide = reader.Frame(128, 64, (100.0, 90.0, 64.0, 32.0), np.eye(4), Path("x.png"))
    np.testing.assert_allclose(scaled_intrinsics(wide, 32), [25.0, 45.0, 16.0, 16.0])
    config = dataset_config(
        model__image_tokenizer__image_size=32, training__dataset__cache_dir=str(tmp_path / "c")
    )
    item = MultiViewDataset(write_list(tmp_path / "l.txt", ["s0"]), config)[0]
    np.testing.assert_allclose(
        item["target_intrinsics"].numpy(), [[10.0, 10.5, 3.75, 4.0], [10.5, 11.0, 3.75, 4.0]]
    )
    assert item["target_images"].shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------- pixels


def half_transparent_sample(tmp_path: Path) -> Path:
    pixels = [view_pixels(0), view_pixels(1)]
    pixels[0][0, 0] = (200, 100, 0, 128)
    write_sample(tmp_path / "s0", pixels=pixels)
    return write_list(tmp_path / "l.txt", ["s0"])


@pytest.mark.parametrize("background", ["white", "black"])
def test_alpha_compositing(tmp_path: Path, background: str) -> None:
    list_file = half_transparent_sample(tmp_path)
    config = dataset_config(
        training__dataset__background_color=background,
        training__dataset__cache_dir=str(tmp_path / "c"),
    )
    item = MultiViewDataset(list_file, config)[0]
    a = 128 / 255
    bg = 1.0 if background == "white" else 0.0
    expected = [200 / 255 * a + bg * (1 - a), 100 / 255 * a + bg * (1 - a), bg * (1 - a)]
    np.testing.assert_allclose(item["input_images"][0, :, 0, 0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(item["target_alpha"][0, 0, 0, 0].item(), a, atol=1e-6)
    # fully transparent pixels become the background, opaque ones keep their colour
    np.testing.assert_allclose(item["input_images"][0, :, 1, 1].numpy(), [bg] * 3)
    np.testing.assert_allclose(
        item["input_images"][0, :, 8, 8].numpy(), np.array([5, 40, 80]) / 255, atol=1e-6
    )
    assert item["background"].tolist() == [bg] * 3


def test_composite_directly() -> None:
    rgba = np.array([[[255, 0, 51, 51], [0, 0, 0, 0]]], dtype=np.uint8)
    rgb, alpha = composite(rgba, np.array([0.0, 1.0, 0.5]))
    assert rgb.shape == (3, 1, 2) and alpha.shape == (1, 1, 2) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[:, 0, 0], [0.2, 0.8, 0.2 * 0.2 + 0.5 * 0.8], atol=1e-6)
    np.testing.assert_allclose(rgb[:, 0, 1], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(alpha[0, 0], [0.2, 0.0], atol=1e-6)


@pytest.mark.parametrize("remove_alpha", [False, True])
def test_remove_alpha_either_way_composites_inputs_onto_the_background(
    tmp_path: Path, remove_alpha: bool
) -> None:
    # As in real FaceLift mouse PNGs: the stored RGB is black wherever alpha is 0.
    pixels = [view_pixels(0), view_pixels(1)]
    for rgba in pixels:
        rgba[rgba[..., 3] == 0, :3] = 0
    pixels[0][0, 0] = (200, 100, 0, 128)
    write_sample(tmp_path / "s0", pixels=pixels)
    list_file = write_list(tmp_path / "l.txt", ["s0"])
    config = dataset_config(
        training__dataset__remove_alpha=remove_alpha,
        training__dataset__cache_dir=str(tmp_path / "c"),
    )
    item = MultiViewDataset(list_file, config)[0]
    a = 128 / 255
    np.testing.assert_allclose(
        item["input_images"][0, :, 0, 0].numpy(),
        [200 / 255 * a + (1 - a), 100 / 255 * a + (1 - a), 1 - a],
        atol=1e-6,
    )
    # transparent pixels stored black reach the model white, in inputs and targets alike
    for key in ("input_images", "target_images"):
        corner = item[key][:, :, 1, 1].numpy()
        np.testing.assert_allclose(corner, np.ones_like(corner))
    np.testing.assert_allclose(item["target_alpha"][0, 0, 0, 0].item(), a, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_alpha_from_rgb_only_png_uses_the_250_rule(tmp_path: Path, mode: str) -> None:
    rgb = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    rgb[0, 0] = (251, 251, 251)  # every channel > 250: background
    rgb[0, 1] = (250, 255, 255)  # one channel not above 250: foreground
    rgb[0, 2] = (250, 250, 250)  # foreground
    rgb[0, 3] = (10, 20, 30)
    folder = tmp_path / "s0"
    write_sample(folder)
    image = Image.fromarray(rgb, "RGB")
    (image if mode == "RGB" else image.convert("L")).save(folder / "images" / "cam_00.png")
    rgba = load_view(read_sample(folder).frames[0], SIZE)
    assert rgba.shape == (SIZE, SIZE, 4) and rgba.dtype == np.uint8
    if mode == "RGB":
        assert rgba[0, :4, 3].tolist() == [0, 255, 255, 255]
        assert rgba[0, 3, :3].tolist() == [10, 20, 30]
    else:  # grey levels: 251 -> bg; 250/255/255 -> L 253 -> bg; 250 -> fg; dark -> fg
        assert rgba[0, :4, 3].tolist() == [0, 0, 255, 255]
    assert rgba[5, 5, 3] == 0  # pure white


def test_grey_alpha_png_keeps_its_alpha(tmp_path: Path) -> None:
    folder = tmp_path / "s0"
    write_sample(folder)
    la = np.zeros((SIZE, SIZE, 2), dtype=np.uint8)
    la[..., 0] = 255
    la[4:12, 4:12] = (255, 255)  # a white, opaque square on a transparent background
    Image.fromarray(la, "LA").save(folder / "images" / "cam_00.png")
    rgba = load_view(read_sample(folder).frames[0], SIZE)
    assert rgba[8, 8, 3] == 255 and rgba[0, 0, 3] == 0


# ----------------------------------------------------------------------------- cache


class DecodeCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Path] = []
        original = reader.decode_view

        def counting(path: Path, expected: tuple[int, int] | None, size: int) -> np.ndarray:
            self.calls.append(path)
            return original(path, expected, size)

        monkeypatch.setattr(reader, "decode_view", counting)


def test_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "s0"
    write_sample(folder, size=32)
    frame = read_sample(folder).frames[0]
    cache = tmp_path / "cache"
    counter = DecodeCounter(monkeypatch)

    first = load_view(frame, 16, cache)
    entries = list(cache.glob("*.npy"))
    assert len(counter.calls) == 1 and len(entries) == 1
    np.testing.assert_array_equal(np.load(entries[0]), first)
    assert not list(cache.glob("*.tmp"))  # written atomically, no temp file left behind

    second = load_view(frame, 16, cache)
    assert len(counter.calls) == 1  # served from the cache file, not decoded
    np.testing.assert_array_equal(second, first)

    # another size is another entry
    assert load_view(frame, 8, cache).shape == (8, 8, 4)
    assert len(counter.calls) == 2 and len(list(cache.glob("*.npy"))) == 2

    # Rewrite the source with new content; bump the mtime so even a coarse clock sees a change.
    new = view_pixels(0, 32)
    new[..., :3] = (0, 255, 0)
    new[..., 3] = 255
    Image.fromarray(new, "RGBA").save(frame.image_path)
    stat = frame.image_path.stat()
    os.utime(frame.image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    third = load_view(frame, 16, cache)
    assert len(counter.calls) == 3
    assert third[..., :3].reshape(-1, 3).tolist() == [[0, 255, 0]] * 256
    assert (third[..., 3] == 255).all()


def test_damaged_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    write_sample(tmp_path / "s0")
    frame = read_sample(tmp_path / "s0").frames[0]
    cache = tmp_path / "cache"
    good = load_view(frame, SIZE, cache)
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(b"not an npy file")
    np.testing.assert_array_equal(load_view(frame, SIZE, cache), good)
    np.testing.assert_array_equal(np.load(entry), good)


def test_no_cache_dir_writes_nothing(tmp_path: Path) -> None:
    write_sample(tmp_path / "s0")
    before = sorted(p for p in tmp_path.rglob("*"))
    load_view(read_sample(tmp_path / "s0").frames[0], 8, cache_dir=None)
    assert sorted(p for p in tmp_path.rglob("*")) == before


# ----------------------------------------------------------------------------- bad input


def test_missing_list_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt: list file not found"):
        read_list_file(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_empty_list_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_list_file(path)
    assert str(info.value).startswith(f"{path}: list file names no sample folders")


def test_missing_sample_folder(tmp_path: Path) -> None:
    list_file = write_list(tmp_path / "l.txt", ["gone"])
    with pytest.raises(DataError) as info:
        MultiViewDataset(list_file, dataset_config())[0]
    assert str(info.value) == f"{tmp_path / 'gone'}: sample folder not found"


def test_missing_camera_json(tmp_path: Path) -> None:
    folder = tmp_path / "s0"
    write_sample(folder)
    (folder / reader.CAMERA_FILE).unlink()
    with pytest.raises(DataError) as info:
        read_sample(folder)
    assert str(info.value).startswith(str(folder / reader.CAMERA_FILE))
    assert "missing camera file" in str(info.value)


def _bad_w2c(kind: str) -> Any:
    c2w = ring_c2w(2)[0]
    w2c = np.linalg.inv(c2w)
    if kind == "3x4":
        return w2c[:3].tolist()
    if kind == "nan":
        w2c[1, 2] = float("nan")
    elif kind == "scaled":
        w2c[:3, :3] *= 1.5
    elif kind == "mirrored":
        w2c[:3, 0] *= -1
    elif kind == "last_row":
        w2c[3] = [0, 0, 1, 1]
    elif kind == "ragged":
        return [[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    return w2c.tolist()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: {"id": "x", "frames": {"0": d["frames"][0]}}, "non-empty 'frames' list"),
        (lambda d: {"id": "x", "frames": []}, "non-empty 'frames' list"),
        (lambda d: [d], "non-empty 'frames' list"),
        (lambda d: _frame0(d, w2c=_bad_w2c("3x4")), "'w2c' must be 4x4, got shape [3, 4]"),
        (lambda d: _frame0(d, w2c=_bad_w2c("ragged")), "'w2c' must be a 4x4 list of numbers"),
        (lambda d: _frame0(d, w2c=_bad_w2c("nan")), "'w2c' has non-finite values"),
        (lambda d: _frame0(d, w2c=_bad_w2c("scaled")), "'w2c' is not a rigid transform"),
        (lambda d: _frame0(d, w2c=_bad_w2c("mirrored")), "'w2c' is not a rigid transform"),
        (lambda d: _frame0(d, w2c=_bad_w2c("last_row")), "'w2c' is not a rigid transform"),
        (lambda d: _frame0(d, w2c=None), "'w2c' must be 4x4"),
        (lambda d: _frame0(d, fx=-3.0), "'fx' must be > 0"),
        (lambda d: _frame0(d, cy="8"), "'cy' must be a finite number"),
        (lambda d: _frame0(d, w=16.5), "'w' and 'h' must be whole numbers"),
        (lambda d: _frame0(d, file_path=""), "'file_path' must be a non-empty string"),
        (lambda d: {"id": "x", "frames": [d["frames"][0], 3]}, "frame 1: expected an object"),
    ],
    ids=[
        "frames-dict",
        "frames-empty",
        "top-level-list",
        "w2c-3x4",
        "w2c-ragged",
        "w2c-nan",
        "w2c-scaled",
        "w2c-mirrored",
        "w2c-last-row",
        "w2c-missing",
        "fx-negative",
        "cy-string",
        "w-fractional",
        "file-path-empty",
        "frame-not-object",
    ],
)
def test_bad_camera_json(tmp_path: Path, mutate: Any, reason: str) -> None:
    folder = tmp_path / "s0"
    data = write_sample(folder)
    path = write_json(folder, mutate(data))
    with pytest.raises(DataError) as info:
        read_sample(folder)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert reason in message


def _frame0(data: dict, **changes: Any) -> dict:
    data["frames"][0].update(changes)
    return data


def test_invalid_json(tmp_path: Path) -> None:
    folder = tmp_path / "s0"
    write_sample(folder)
    path = folder / reader.CAMERA_FILE
    path.write_text('{"id": "s0", "frames": [')
    with pytest.raises(DataError) as info:
        read_sample(folder)
    assert str(info.value).startswith(f"{path}: invalid JSON")


@pytest.mark.parametrize("use_cache", [False, True])
def test_missing_png(tmp_path: Path, use_cache: bool) -> None:
    folder = tmp_path / "s0"
    write_sample(folder)
    frame = read_sample(folder).frames[1]
    frame.image_path.unlink()
    with pytest.raises(DataError) as info:
        load_view(frame, SIZE, tmp_path / "cache" if use_cache else None)
    assert str(info.value) == f"{frame.image_path}: image file not found"


@pytest.mark.parametrize("use_cache", [False, True])
def test_truncated_png(tmp_path: Path, use_cache: bool) -> None:
    folder = tmp_path / "s0"
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    write_sample(folder, pixels=[noise, noise])
    frame = read_sample(folder).frames[0]
    data = frame.image_path.read_bytes()
    assert len(data) > 1000  # noise does not compress: half the file cuts into the pixel data
    frame.image_path.write_bytes(data[: len(data) // 2])
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        load_view(frame, SIZE, cache if use_cache else None)
    assert str(info.value).startswith(f"{frame.image_path}: cannot decode image")
    assert not list(cache.glob("*.npy"))  # nothing half-decoded was cached


def test_not_a_png(tmp_path: Path) -> None:
    folder = tmp_path / "s0"
    write_sample(folder)
    frame = read_sample(folder).frames[0]
    frame.image_path.write_text("hello")
    with pytest.raises(DataError, match="cannot decode image") as info:
        load_view(frame, SIZE)
    assert str(info.value).startswith(str(frame.image_path))


def test_png_size_differs_from_camera_file(tmp_path: Path) -> None:
    folder = tmp_path / "s0"
    write_sample(folder)
    frame = read_sample(folder).frames[1]
    Image.new("RGBA", (SIZE + 4, SIZE)).save(frame.image_path)
    with pytest.raises(DataError) as info:
        load_view(frame, SIZE)
    assert str(info.value) == (
        f"{frame.image_path}: image is {SIZE + 4}x{SIZE} but the camera file says {SIZE}x{SIZE}"
    )


def test_fewer_views_than_num_views(tmp_path: Path) -> None:
    write_sample(tmp_path / "s0", n_views=3)
    list_file = write_list(tmp_path / "l.txt", ["s0"])
    config = dataset_config(training__dataset__num_views=4, training__dataset__num_input_views=2)
    with pytest.raises(DataError) as info:
        MultiViewDataset(list_file, config)[0]
    assert str(info.value) == f"{tmp_path / 's0'}: has 3 views, fewer than num_views=4"


# ----------------------------------------------------------------------------- generated data


def test_generated_dataset_reads_back(tmp_path: Path) -> None:
    synthetic = pytest.importorskip("trainables.gslrm.data.synthetic")
    summary = synthetic.generate_dataset(tmp_path / "gen", samples=4, size=32, rig="mouse6", seed=0)
    folders = read_list_file(summary["train_list"]) + read_list_file(summary["val_list"])
    assert len(folders) == 4
    rigs = []
    for folder in folders:
        sample = read_sample(folder)
        assert len(sample.frames) == 6
        rigs.append(np.stack([f.w2c for f in sample.frames]))
        for frame in sample.frames:
            rgba = load_view(frame, 32)
            assert rgba.shape == (32, 32, 4)
            # a mouse on white: some foreground, mostly background
            assert 0 < (rgba[..., 3] > 127).mean() < 0.5
    # one fixed rig: every sample has the same cameras
    for rig in rigs[1:]:
        np.testing.assert_allclose(rig, rigs[0])
