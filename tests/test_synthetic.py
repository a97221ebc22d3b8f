"""Tests for the synthetic mouse dataset generator (CPU, a few seconds in all)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.gslrm.data import synthetic as syn

SS2 = syn.SUPERSAMPLE**2


@pytest.fixture(scope="module")
def mouse6_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mouse6")
    summary = syn.generate_dataset(out, samples=8, size=64, rig="mouse6", seed=0)
    return out, summary


@pytest.fixture(scope="module")
def turntable_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("turntable6")
    summary = syn.generate_dataset(out, samples=2, size=32, rig="turntable6", seed=1)
    return out, summary


def _sample_dirs(root: Path) -> list[Path]:
    lines = []
    for name in (syn.TRAIN_LIST, syn.VAL_LIST):
        lines += [ln for ln in (root / name).read_text().splitlines() if ln.strip()]
    return [root / ln for ln in lines]


def _frames(sample_dir: Path) -> list[dict]:
    return json.loads((sample_dir / "opencv_cameras.json").read_text())["frames"]


def _rgba(sample_dir: Path, frame: dict) -> np.ndarray:
    with Image.open(sample_dir / frame["file_path"]) as im:
        assert im.mode == "RGBA"
        return np.asarray(im)


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != syn.META_NAME  # meta holds the wall-clock time
    }


def _project(frame: dict, point: np.ndarray) -> tuple[float, float, float]:
    w2c = np.asarray(frame["w2c"])
    x, y, z = w2c[:3, :3] @ point + w2c[:3, 3]
    return frame["fx"] * x / z + frame["cx"], frame["fy"] * y / z + frame["cy"], z


def _azimuth_gaps(centers: np.ndarray) -> np.ndarray:
    az = np.sort(np.degrees(np.arctan2(centers[:, 1], centers[:, 0])) % 360.0)
    return np.diff(np.concatenate([az, az[:1] + 360.0]))


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    syn.generate_dataset(a, samples=2, size=32, seed=3)
    syn.generate_dataset(b, samples=2, size=32, seed=3)
    syn.generate_dataset(c, samples=2, size=32, seed=4)
    files_a, files_b, files_c = _all_bytes(a), _all_bytes(b), _all_bytes(c)
    assert files_a == files_b
    pngs = [k for k in files_a if k.endswith(".png")]
    assert len(pngs) == 12
    assert all(files_a[k] != files_c[k] for k in pngs)


def test_sample_does_not_depend_on_sample_count(tmp_path: Path) -> None:
    syn.generate_dataset(tmp_path / "two", samples=2, size=32, seed=5)
    syn.generate_dataset(tmp_path / "three", samples=3, size=32, seed=5)
    one_of_two = _all_bytes(tmp_path / "two" / "samples" / "000001")
    one_of_three = _all_bytes(tmp_path / "three" / "samples" / "000001")
    assert one_of_two == one_of_three


# ----------------------------------------------------------------------------- coverage


def test_mean_foreground_fraction_mouse6(mouse6_dataset: tuple[Path, dict]) -> None:
    root, summary = mouse6_dataset
    alphas = [
        _rgba(d, f)[..., 3].astype(np.float64) / 255.0
        for d in _sample_dirs(root)
        for f in _frames(d)
    ]
    fg = float(np.mean([a.mean() for a in alphas]))
    assert 0.03 <= fg <= 0.08
    assert summary["mean_foreground"] == pytest.approx(fg, abs=1e-9)
    assert max(a.mean() for a in alphas) < 0.25


def test_cameras_look_at_the_mouse(mouse6_dataset: tuple[Path, dict]) -> None:
    root, _ = mouse6_dataset
    for sample_dir in _sample_dirs(root):
        for frame in _frames(sample_dir):
            alpha = _rgba(sample_dir, frame)[..., 3].astype(np.float64)
            assert alpha.sum() > 0, "empty mask"
            u, v, z = _project(frame, np.zeros(3))
            assert z > 0
            assert 0 <= u < frame["w"] and 0 <= v < frame["h"]
            ys, xs = np.mgrid[: alpha.shape[0], : alpha.shape[1]] + 0.5
            cu, cv = (xs * alpha).sum() / alpha.sum(), (ys * alpha).sum() / alpha.sum()
            assert math.hypot(cu - u, cv - v) < 0.25 * frame["w"]
            # Nothing is cut off at the image border.
            border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
            assert border.max() == 0


def test_alpha_is_exact_coverage(mouse6_dataset: tuple[Path, dict]) -> None:
    root, _ = mouse6_dataset
    for sample_dir in _sample_dirs(root):
        for frame in _frames(sample_dir):
            rgba = _rgba(sample_dir, frame)
            alpha = rgba[..., 3].astype(np.int64)
            # 8-bit alpha is round(k * 255 / 16) for an integer hit count k.
            k = np.round(alpha * SS2 / 255.0)
            assert np.array_equal(np.round(k * 255.0 / SS2), alpha)
            assert (alpha == 255).any() and (alpha == 0).any()
            # Fractional pixels only at the boundary: each has a 0 or 255 pixel among its
            # 8 neighbours (the padding counts as background).
            pad = np.pad(alpha, 1)
            h, w = alpha.shape
            neigh = np.stack(
                [
                    pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
                    for dy in (-1, 0, 1)
                    for dx in (-1, 0, 1)
                    if dy or dx
                ]
            )
            frac = (alpha > 0) & (alpha < 255)
            has_edge = ((neigh == 0) | (neigh == 255)).any(axis=0)
            assert has_edge[frac].all()
            # RGB: white background, a non-white mouse.
            rgb = rgba[..., :3]
            assert (rgb[alpha == 0] == 255).all()
            assert (rgb[alpha > 0].max(axis=-1) < 250).all()


def test_subpixel_grid_is_centred_on_pixel_centres() -> None:
    cam = syn.make_rig("turntable6", 8)[0]
    rows = np.arange(8 * syn.SUPERSAMPLE)
    cols = np.arange(8 * syn.SUPERSAMPLE)
    dirs = syn.subray_dirs(cam, rows, cols, syn.SUPERSAMPLE)
    cam_dirs = dirs @ cam.w2c[:3, :3].T
    u = cam.fx * cam_dirs[..., 0] / cam_dirs[..., 2] + cam.cx
    v = cam.fy * cam_dirs[..., 1] / cam_dirs[..., 2] + cam.cy
    s = syn.SUPERSAMPLE
    u_px = u.reshape(8, s, 8, s).mean(axis=(1, 3))
    v_px = v.reshape(8, s, 8, s).mean(axis=(1, 3))
    ys, xs = np.mgrid[:8, :8] + 0.5
    np.testing.assert_allclose(u_px, xs, atol=1e-9)
    np.testing.assert_allclose(v_px, ys, atol=1e-9)


def test_ray_primitive_intersections() -> None:
    origin = np.array([0.0, 0.0, -5.0])
    cap = syn.Capsule(np.array([-1.0, 0, 0]), np.array([1.0, 0, 0]), 0.5, syn.FUR)
    assert syn.intersect_capsule(origin, np.array([[0.0, 0, 1]]), cap)[0] == pytest.approx(4.5)
    # Along the axis, offset by 0.3: enters through the end sphere at x = -1 - 0.4.
    t = syn.intersect_capsule(np.array([-5.0, 0.3, 0]), np.array([[1.0, 0, 0]]), cap)[0]
    assert t == pytest.approx(3.6)
    assert np.isinf(syn.intersect_capsule(origin, np.array([[0.0, 0.6, 0.8]]), cap)[0])
    ell = syn.Ellipsoid(np.zeros(3), syn.rot_z(0.7), np.array([2.0, 1.0, 0.5]), syn.FUR)
    assert syn.intersect_ellipsoid(origin, np.array([[0.0, 0, 1]]), ell)[0] == pytest.approx(4.5)
    n = syn.surface_normal(np.array([[0.0, 0, -0.5]]), ell)
    np.testing.assert_allclose(n, [[0.0, 0.0, -1.0]], atol=1e-12)


# ----------------------------------------------------------------------------- rigs and JSON


def test_mouse6_rig_is_uneven() -> None:
    centers = np.stack([c.center for c in syn.make_rig("mouse6", 64)])
    gaps = _azimuth_gaps(centers)
    assert gaps.max() / gaps.min() > 5
    elevations = np.degrees(np.arcsin(centers[:, 2] / np.linalg.norm(centers, axis=1)))
    assert elevations.max() - elevations.min() > 100
    fx = np.array([s.fx for s in syn.rig_specs("mouse6")])
    assert fx.min() >= 725 and fx.max() <= 820


def test_turntable6_rig_is_even(turntable_dataset: tuple[Path, dict]) -> None:
    root, _ = turntable_dataset
    frames = _frames(_sample_dirs(root)[0])
    centers = np.stack([syn.Camera(1, 1, 1, 1, 0, 0, np.asarray(f["w2c"])).center for f in frames])
    np.testing.assert_allclose(_azimuth_gaps(centers), 60.0, atol=1e-6)
    for f in frames:
        assert f["cx"] == f["cy"] == 16.0


@pytest.mark.parametrize("rig", syn.RIGS)
def test_camera_json_is_valid(rig: str, mouse6_dataset, turntable_dataset) -> None:
    root, _ = mouse6_dataset if rig == "mouse6" else turntable_dataset
    specs = syn.rig_specs(rig)
    for sample_dir in _sample_dirs(root):
        meta = json.loads((sample_dir / "opencv_cameras.json").read_text())
        assert meta["id"] == sample_dir.name
        assert len(meta["frames"]) == 6
        for k, (frame, spec) in enumerate(zip(meta["frames"], specs, strict=True)):
            assert set(frame) == {"w", "h", "fx", "fy", "cx", "cy", "w2c", "file_path"}
            assert frame["file_path"] == f"images/cam_{k:02d}.png"
            w2c = np.asarray(frame["w2c"])
            assert w2c.shape == (4, 4)
            np.testing.assert_allclose(w2c[3], [0, 0, 0, 1])
            rot = w2c[:3, :3]
            np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(rot) == pytest.approx(1.0)
            center = -rot.T @ w2c[:3, 3]
            assert np.linalg.norm(center) == pytest.approx(spec.distance)
            size = frame["w"]
            assert frame["fx"] == pytest.approx(spec.fx * size / syn.REFERENCE_SIZE)
            rgba = _rgba(sample_dir, frame)
            assert rgba.shape == (frame["h"], frame["w"], 4)


def test_look_at_handles_the_pole() -> None:
    w2c = syn.look_at_w2c(np.array([0.0, 0.0, 3.0]), np.zeros(3))
    rot = w2c[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rot[2], [0, 0, -1], atol=1e-12)


# ----------------------------------------------------------------------------- files


def test_list_files_are_relative_and_complete(mouse6_dataset: tuple[Path, dict]) -> None:
    root, summary = mouse6_dataset
    train = (root / syn.TRAIN_LIST).read_text().splitlines()
    val = (root / syn.VAL_LIST).read_text().splitlines()
    assert summary["num_train"] == len(train) == 6 and summary["num_val"] == len(val) == 2
    assert not set(train) & set(val)
    for line in train + val:
        assert not Path(line).is_absolute()
        folder = root / line
        assert (folder / "opencv_cameras.json").is_file()
        for frame in _frames(folder):
            assert (folder / frame["file_path"]).is_file()
    assert not list(root.rglob("*.tmp"))


def test_val_count() -> None:
    assert syn.val_count(1, 0.2) == 0
    assert syn.val_count(2, 0.2) == 1
    assert syn.val_count(10, 0.2) == 2
    assert syn.val_count(10, 0.0) == 0


def test_generate_is_cached_and_regenerates_on_new_params(tmp_path: Path) -> None:
    first = syn.generate_dataset(tmp_path, samples=3, size=32, seed=0)
    png = tmp_path / "samples" / "000000" / "images" / "cam_00.png"
    stamp = png.stat().st_mtime_ns
    again = syn.generate_dataset(tmp_path, samples=3, size=32, seed=0)
    assert again["cached"] and not first["cached"]
    assert again["mean_foreground"] == pytest.approx(first["mean_foreground"])
    assert png.stat().st_mtime_ns == stamp
    smaller = syn.generate_dataset(tmp_path, samples=2, size=24, seed=0)
    assert not smaller["cached"]
    assert not (tmp_path / "samples" / "000002").exists()
    with Image.open(png) as im:
        assert im.size == (24, 24)


def test_interrupted_run_resumes(tmp_path: Path) -> None:
    syn.generate_dataset(tmp_path, samples=2, size=24, seed=0)
    (tmp_path / syn.TRAIN_LIST).unlink()
    (tmp_path / "samples" / "000001" / "opencv_cameras.json").unlink()
    summary = syn.generate_dataset(tmp_path, samples=2, size=24, seed=0)
    assert not summary["cached"]
    assert (tmp_path / "samples" / "000001" / "opencv_cameras.json").is_file()
    assert (tmp_path / syn.TRAIN_LIST).is_file()


def test_two_processes_generating_at_once_write_it_once(tmp_path: Path) -> None:
    """Two studies started together share the cache: one generates, the other waits and reuses."""
    code = (
        "import json, sys; from trainables.gslrm.data.synthetic import generate_dataset; "
        "print(json.dumps(generate_dataset(sys.argv[1], samples=6, size=32, seed=3)))"
    )
    repo = Path(__file__).resolve().parent.parent
    shared = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(shared)], cwd=repo, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(r["cached"] for r in results) == [False, True]
    syn.generate_dataset(tmp_path / "alone", samples=6, size=32, seed=3)
    for name in (syn.TRAIN_LIST, syn.VAL_LIST, "samples/000005/images/cam_05.png"):
        assert (shared / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


def test_cli_and_contact_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    rc = syn.main(
        [
            "--out",
            str(tmp_path / "ds"),
            "--samples",
            "2",
            "--size",
            "16",
            "--rig",
            "turntable6",
            "--seed",
            "2",
            "--contact-sheet",
            str(sheet),
        ]
    )
    assert rc == 0
    with Image.open(sheet) as im:
        assert im.mode == "RGB"
        assert im.size == (6 * 16 + 5 * 2, 2 * 16 + 2)


# ----------------------------------------------------------------------------- test split

# sha256 over (path, decoded pixels or file bytes) of samples=3, size=16, mouse6, seed 0, taken
# with the generator before test splits existed: the existing flags' output must not change.
PINNED_DATASET_DIGEST = "011b8eb047a6f68b8c929765fc5ef0c0376c3fc342657e41f86b758258a8171b"


def _content_digest(root: Path, skip: tuple[str, ...] = ()) -> str:
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if not p.is_file() or p.name in (syn.META_NAME, ".generate.lock") or rel.startswith(skip):
            continue
        digest.update(rel.encode())
        if p.suffix == ".png":
            with Image.open(p) as im:
                digest.update(np.asarray(im).tobytes())
        else:
            digest.update(p.read_bytes())
    return digest.hexdigest()


def test_existing_flags_output_is_pinned(tmp_path: Path) -> None:
    syn.generate_dataset(tmp_path, samples=3, size=16, rig="mouse6", seed=0)
    assert _content_digest(tmp_path) == PINNED_DATASET_DIGEST
    assert not (tmp_path / syn.TEST_LIST).exists() and not (tmp_path / syn.TEST_DIR).exists()
    params = json.loads((tmp_path / syn.META_NAME).read_text())["params"]
    assert "test_samples" not in params  # the cache record of older datasets still matches


def test_test_split_is_disjoint_and_leaves_train_and_val_as_they_were(tmp_path: Path) -> None:
    root = tmp_path / "a"
    summary = syn.generate_dataset(root, samples=3, size=16, seed=0, test_samples=2)
    # train / val files are those of the same flags without a test split
    assert _content_digest(root, skip=(syn.TEST_LIST, syn.TEST_DIR)) == PINNED_DATASET_DIGEST
    test_lines = (root / syn.TEST_LIST).read_text().splitlines()
    assert test_lines == ["test_samples/000000", "test_samples/000001"]
    assert summary["num_test"] == 2 and summary["test_list"] == str(root / syn.TEST_LIST)
    train_val = _sample_dirs(root)
    ids = {json.loads((d / "opencv_cameras.json").read_text())["id"] for d in train_val}
    for line in test_lines:
        folder = root / line
        assert json.loads((folder / "opencv_cameras.json").read_text())["id"] not in ids
        # a different mouse from every train / val sample (not a copy under a new name)
        pixels = _rgba(folder, _frames(folder)[0])
        for other in train_val:
            assert not np.array_equal(pixels, _rgba(other, _frames(other)[0]))
    # the same test mice whatever the number of train / val samples
    syn.generate_dataset(tmp_path / "b", samples=5, size=16, seed=0, test_samples=2)
    assert _all_bytes(root / syn.TEST_DIR) == _all_bytes(tmp_path / "b" / syn.TEST_DIR)
    # cached on a second call; dropping the test split removes it
    assert syn.generate_dataset(root, samples=3, size=16, seed=0, test_samples=2)["cached"]
    syn.generate_dataset(root, samples=3, size=16, seed=0)
    assert not (root / syn.TEST_LIST).exists() and not list((root / syn.TEST_DIR).iterdir())
    assert _content_digest(root, skip=(syn.TEST_DIR,)) == PINNED_DATASET_DIGEST


def test_cli_help_names_the_module_every_flag_and_the_files(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        syn.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m trainables.gslrm.data.synthetic")
    flags = [a for a in syn.build_parser()._actions if a.option_strings != ["-h", "--help"]]
    assert {a.option_strings[0] for a in flags} >= {"--samples", "--size", "--test-samples"}
    for action in flags:
        assert action.help, action.option_strings
        assert " ".join(action.help.split()[:3]) in " ".join(text.split())
    for name in (syn.TRAIN_LIST, syn.VAL_LIST, syn.TEST_LIST, "opencv_cameras.json"):
        assert name in text


def test_cli_refuses_bad_sizes_before_writing(tmp_path: Path, capsys) -> None:
    for flags in (["--samples", "0"], ["--samples", "2", "--test-samples", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            syn.main(["--out", str(tmp_path / "ds"), "--size", "16", *flags])
        assert exit_info.value.code == 2
        assert "must be >=" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
    rc = syn.main(["--out", str(tmp_path / "ds"), "--samples", "2", "--size", "8",
                   "--test-samples", "1"])  # fmt: skip
    assert rc == 0 and (tmp_path / "ds" / syn.TEST_LIST).read_text() == "test_samples/000000\n"
