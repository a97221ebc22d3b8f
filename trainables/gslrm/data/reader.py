"""Reader for the FaceLift / GS-LRM on-disk format.

    data_train.txt                 one sample folder per line (absolute, or relative to the list file)
    <sample>/opencv_cameras.json   {"id", "frames": [{"w","h","fx","fy","cx","cy","w2c","file_path", ...}]}
    <sample>/<file_path>           RGBA PNG, alpha = foreground mask

`w2c` is a 4x4 row-major world-to-camera matrix in OpenCV convention (x right, y down,
z forward). Extra per-frame keys (e.g. FaceLift's `blender_camera_name`) are ignored.
Every problem raises `DataError` naming the file and the reason.

Decoding and LANCZOS-resizing PNGs dominates loading time, so `load_view` keeps the resized
RGBA in an on-disk cache keyed by (source path, size, mtime, byte size): a changed source
file gets a new key and is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainables.gslrm.atomic import atomic_path

CAMERA_FILE = "opencv_cameras.json"
# FaceLift builds alpha from RGB-only images: pixels with every channel above 250/255 are background.
RGB_ONLY_BACKGROUND_LEVEL = 250
# Camera numbers outside these bounds become inf or 0 in float32: refuse them.
MAX_MAGNITUDE = 1e30
MIN_POSITIVE = 1e-6


class DataError(ValueError):
    """A dataset file is missing or malformed. The message names the file and the problem."""


@dataclass(frozen=True)
class Frame:
    """One camera view of a sample, as written in opencv_cameras.json (full-resolution pixels)."""

    width: int
    height: int
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy
    w2c: np.ndarray  # [4, 4] float64
    image_path: Path


@dataclass(frozen=True)
class Sample:
    sample_id: str
    folder: Path
    frames: tuple[Frame, ...]


def _exists(path: Path, kind: str, test) -> bool:
    """path.is_file()/is_dir() that turns odd names (too long, NUL) into DataError."""
    try:
        return test(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot open {kind} ({exc})") from None


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # ints beyond float range
        return False


def read_list_file(list_file: str | Path) -> list[Path]:
    """Sample folders named in a list file; relative entries are resolved against its folder."""
    list_file = Path(list_file)
    if not _exists(list_file, "list file", Path.is_file):
        raise DataError(f"{list_file}: list file not found (expected one sample folder per line)")
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_file}: cannot read list file: {exc}") from None
    folders = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry)
        folders.append(path if path.is_absolute() else (list_file.parent / path))
    if not folders:
        raise DataError(f"{list_file}: list file names no sample folders")
    return folders


# Blocks of correlated items (issue 22, item 7). A list file stays FaceLift's (one sample folder
# per line, which the reference trainer reads unchanged); the blocks live in a sidecar beside it,
# `<list stem>.blocks.tsv` (data_test.txt -> data_test.blocks.tsv), either
#     <sample folder, as the list writes it><TAB><block id>     one line per listed sample
# or the one directive line
#     @consecutive<TAB><B>     blocks of B consecutive list lines (video frames in list order)
# '#' lines and blank lines are skipped. Without a sidecar every item is its own block.
BLOCKS_SUFFIX = ".blocks.tsv"
CONSECUTIVE = "@consecutive"


def block_file(list_file: str | Path) -> Path:
    """The block sidecar of a list file (it may not exist)."""
    list_file = Path(list_file)
    return list_file.with_name(list_file.stem + BLOCKS_SUFFIX)


def consecutive_blocks(n_items: int, size: int) -> list[str]:
    """Block ids of n_items list lines in blocks of `size` consecutive lines: '0', '0', ..."""
    if size < 1:
        raise DataError(f"{CONSECUTIVE}: block size must be >= 1, got {size}")
    return [str(index // size) for index in range(n_items)]


def parse_blocks(text: str, list_dir: Path, folders: list[Path], where: str) -> list[str]:
    """The block id of each folder from a sidecar's text (see BLOCKS_SUFFIX); entries are
    resolved against the list's folder as the list's are. Every listed folder needs exactly one
    block, and no other folder may be named: a partial file would silently make the missing
    items their own blocks, which is the independence the file exists to deny."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) == 1 and lines[0].split("\t")[0].strip() == CONSECUTIVE:
        size = lines[0].split("\t")[1].strip() if "\t" in lines[0] else ""
        if not size.isdigit():
            raise DataError(f"{where}: expected '{CONSECUTIVE}<TAB><block size>', got {lines[0]!r}")
        return consecutive_blocks(len(folders), int(size))
    found: dict[Path, str] = {}
    for number, line in enumerate(lines, 1):
        entry, tab, block = line.rpartition("\t")
        if not tab or not entry.strip() or not block.strip():
            raise DataError(f"{where}: line {number}: expected '<sample folder><TAB><block id>'")
        path = Path(entry.strip())
        found[path if path.is_absolute() else list_dir / path] = block.strip()
    missing = [f for f in folders if f not in found]
    if missing:
        raise DataError(
            f"{where}: no block for listed sample {missing[0]} ({len(missing)} missing)"
        )
    unknown = sorted(set(found) - set(folders))
    if unknown:
        raise DataError(f"{where}: names {unknown[0]}, which the list file does not list")
    return [found[f] for f in folders]


def read_blocks(list_file: str | Path, folders: list[Path]) -> list[str] | None:
    """Block id per listed folder from the list's sidecar, None when there is none."""
    sidecar = block_file(list_file)
    if not sidecar.is_file():
        return None
    try:
        text = sidecar.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{sidecar}: cannot read block file: {exc}") from None
    return parse_blocks(text, Path(list_file).parent, folders, str(sidecar))


def _number(frame: dict, key: str, where: str, positive: bool = False) -> float:
    value = frame.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise DataError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise DataError(f"{where}: '{key}' must be > 0, got {value!r}")
    if abs(value) > MAX_MAGNITUDE or (positive and value < MIN_POSITIVE):
        raise DataError(f"{where}: '{key}' is out of range, got {value!r}")
    return float(value)


def _rigid_w2c(value: object, where: str) -> np.ndarray:
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: 'w2c' must be a 4x4 list of numbers") from None
    if matrix.shape != (4, 4):
        raise DataError(f"{where}: 'w2c' must be 4x4, got shape {list(matrix.shape)}")
    if not np.isfinite(matrix).all():
        raise DataError(f"{where}: 'w2c' has non-finite values")
    if np.abs(matrix).max() > MAX_MAGNITUDE:
        raise DataError(f"{where}: 'w2c' has values out of range")
    rotation = matrix[:3, :3]
    if (
        np.abs(rotation @ rotation.T - np.eye(3)).max() > 1e-3
        or np.linalg.det(rotation) < 0
        or np.abs(matrix[3] - [0, 0, 0, 1]).max() > 1e-6
    ):
        raise DataError(
            f"{where}: 'w2c' is not a rigid transform (rotation must be orthonormal, "
            "det +1, last row 0 0 0 1)"
        )
    return matrix


@dataclass(frozen=True)
class FrameScan:
    """One camera-file frame checked field by field, so every bad field is known at once.

    image_path is set when 'file_path' is valid and size when 'w' and 'h' are, even if other
    fields are bad, so a checker can still open the image; frame is set only when all are valid.
    """

    image_path: Path | None
    size: tuple[int, int] | None  # (w, h) in full-resolution pixels
    frame: Frame | None
    problems: tuple[str, ...]


def _scan_frame(raw: object, folder: Path, where: str) -> FrameScan:
    if not isinstance(raw, dict):
        return FrameScan(None, None, None, (f"{where}: expected an object",))
    problems: list[str] = []

    def field_value(check):
        try:
            return check()
        except DataError as exc:
            problems.append(str(exc))
            return None

    width = field_value(lambda: _number(raw, "w", where, True))
    height = field_value(lambda: _number(raw, "h", where, True))
    size = None
    if width is not None and height is not None:
        if width != int(width) or height != int(height):
            problems.append(f"{where}: 'w' and 'h' must be whole numbers")
        else:
            size = (int(width), int(height))
    intrinsics = [
        field_value(lambda k=k: _number(raw, k, where, k in ("fx", "fy")))
        for k in ("fx", "fy", "cx", "cy")
    ]
    file_path = raw.get("file_path")
    image_path = None
    if isinstance(file_path, str) and file_path:
        image_path = folder / file_path
    else:
        problems.append(f"{where}: 'file_path' must be a non-empty string")
    w2c = field_value(lambda: _rigid_w2c(raw.get("w2c"), where))
    frame = None
    if not problems:
        frame = Frame(size[0], size[1], tuple(intrinsics), w2c, image_path)
    return FrameScan(image_path, size, frame, tuple(problems))


def scan_sample(folder: str | Path) -> tuple[str, list[FrameScan]]:
    """(sample id, one FrameScan per frame) of a sample folder; images are not opened.

    Raises DataError when the folder or its camera file as a whole is unusable (missing,
    invalid JSON, no 'frames' list): then no frame can be located.
    """
    folder = Path(folder)
    if not _exists(folder, "sample folder", Path.is_dir):
        raise DataError(f"{folder}: sample folder not found")
    camera_file = folder / CAMERA_FILE
    if not _exists(camera_file, "camera file", Path.is_file):
        raise DataError(f"{camera_file}: missing camera file")
    try:
        data = json.loads(camera_file.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers decode errors
        raise DataError(f"{camera_file}: invalid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise DataError(f"{camera_file}: expected an object with a non-empty 'frames' list")
    scans = [
        _scan_frame(raw, folder, f"{camera_file} frame {index}")
        for index, raw in enumerate(data["frames"])
    ]
    return str(data.get("id", folder.name)), scans


def read_sample(folder: str | Path) -> Sample:
    """Parse and validate one sample folder's opencv_cameras.json (images are not opened).
    Raises DataError with the first problem found."""
    sample_id, scans = scan_sample(folder)
    for scan in scans:
        if scan.problems:
            raise DataError(scan.problems[0])
    return Sample(sample_id, Path(folder), tuple(scan.frame for scan in scans))


def _cache_path(cache_dir: Path, frame: Frame, size: int) -> Path:
    # The camera's w/h is in the key so that a camera file edited to a wrong size is not
    # hidden by an older cache entry.
    stat = frame.image_path.stat()
    key = (
        f"{frame.image_path.resolve()}|{frame.width}x{frame.height}|{size}|"
        f"{stat.st_mtime_ns}|{stat.st_size}"
    )
    return cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"


def decode_view(path: Path, expected: tuple[int, int] | None, size: int) -> np.ndarray:
    """Decode an image file to RGBA resized to size x size: [size, size, 4] uint8.

    expected: the (w, h) the camera file gives, checked against the image; None skips the check.
    """
    if not _exists(path, "image file", Path.is_file):
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            if expected is not None and image.size != expected:
                raise DataError(
                    f"{path}: image is {image.size[0]}x{image.size[1]} but the camera "
                    f"file says {expected[0]}x{expected[1]}"
                )
            if image.mode == "RGBA":
                rgba = image
            elif "A" in image.getbands() or "transparency" in image.info:
                rgba = image.convert("RGBA")
            else:
                rgb = np.asarray(image.convert("RGB"))
                alpha = ~(rgb > RGB_ONLY_BACKGROUND_LEVEL).all(-1)
                rgba = Image.fromarray(np.dstack([rgb, (alpha * 255).astype(np.uint8)]), "RGBA")
            if rgba.size != (size, size):
                rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(rgba, dtype=np.uint8).copy()
    except DataError:
        raise
    except (
        OSError,
        UnidentifiedImageError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def load_view(frame: Frame, size: int, cache_dir: Path | None = None) -> np.ndarray:
    """Decoded RGBA resized to size x size: [size, size, 4] uint8 (cached when cache_dir is set)."""
    if cache_dir is None:
        return decode_view(frame.image_path, (frame.width, frame.height), size)
    try:
        cached = _cache_path(cache_dir, frame, size)
    except (OSError, ValueError):
        raise DataError(f"{frame.image_path}: image file not found") from None
    if cached.is_file():
        try:
            return np.load(cached)
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    rgba = decode_view(frame.image_path, (frame.width, frame.height), size)
    try:
        with atomic_path(cached, durable=False) as tmp, tmp.open("wb") as handle:
            np.save(handle, rgba)
    except OSError:
        pass  # the cache is an optimisation; a read-only disk must not stop training
    return rgba


def scaled_intrinsics(frame: Frame, size: int) -> np.ndarray:
    """[4] fx, fy, cx, cy for the image resized from (w, h) to size x size."""
    fx, fy, cx, cy = frame.intrinsics
    sx, sy = size / frame.width, size / frame.height
    return np.array([fx * sx, fy * sy, cx * sx, cy * sy], dtype=np.float64)


def background_rgb(name: str) -> np.ndarray:
    """[3] float RGB of a background colour name."""
    return {"white": np.ones(3), "black": np.zeros(3)}[name]


def composite(rgba: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGBA uint8 [H, W, 4] -> (rgb [3, H, W] float32 in [0, 1], alpha [1, H, W] float32).

    The RGB is always composited over `background` [3] with the soft alpha, whatever
    `training.dataset.remove_alpha` says: FaceLift's loader does the same, and without it a PNG
    whose RGB is black where alpha is 0 would give the model black-background inputs against
    white-background targets and renders.
    """
    # Transpose the uint8 view first and scale in place: float transposes dominate otherwise.
    chw = rgba.transpose(2, 0, 1)
    rgb = chw[:3].astype(np.float32, order="C")
    rgb *= np.float32(1 / 255)
    alpha = chw[3:].astype(np.float32, order="C")
    alpha *= np.float32(1 / 255)
    bg = background.astype(np.float32)[:, None, None]
    rgb -= bg
    rgb *= alpha
    rgb += bg
    return rgb, alpha


def normalize_rig(c2w: np.ndarray, target_distance: float) -> np.ndarray:
    """Rotate the world so the rig's plane normal is +Z, then scale so the mean camera distance
    to the origin is `target_distance`. One similarity for all cameras, so images stay
    consistent with the geometry (FaceLift rescales each camera on its own, which does not).

    c2w: [N, 4, 4] -> [N, 4, 4]
    """
    centres = c2w[:, :3, 3]
    _, _, vt = np.linalg.svd(centres - centres.mean(0))
    normal = vt[-1]
    if normal @ (-c2w[:, :3, 1]).mean(0) < 0:  # OpenCV "up" is -y
        normal = -normal
    z = np.array([0.0, 0.0, 1.0])
    axis, cos = np.cross(normal, z), float(normal @ z)
    if np.linalg.norm(axis) < 1e-9:
        rotation = np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0])
    else:
        skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + skew + skew @ skew / (1 + cos)
    out = c2w.copy()
    out[:, :3, :3] = rotation @ c2w[:, :3, :3]
    moved = centres @ rotation.T
    out[:, :3, 3] = moved * (target_distance / np.linalg.norm(moved, axis=1).mean())
    return out
