"""Seeded fuzz test of the dataset reader: damaged camera JSON, list files and PNGs.

Every mutated input must either load into a valid result (finite rigid w2c, positive focal
lengths, finite tensors from `MultiViewDataset.__getitem__`) or raise `DataError`. Any other
exception, an invalid result or more than `CASE_LIMIT_S` seconds for one case fails the test
with the mutation printed. Each kind of mutation is its own test, so a reader bug found by
one kind does not hide the others. `BUGS` names the reader bugs this test found (all fixed);
their cases stay as regression tests.
"""

from __future__ import annotations

import copy
import io
import json
import math
import random
import shutil
import signal
import struct
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.gslrm.config import load_config
from trainables.gslrm.data.dataset import MultiViewDataset
from trainables.gslrm.data.reader import CAMERA_FILE, DataError, read_list_file, read_sample
from trainables.gslrm.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parent.parent
SEED = 20240611
ITERATIONS_PER_KIND = 20  # 16 kinds -> 320 cases
CASE_LIMIT_S = 2.0
SIZE = 32
NUMBER_KEYS = ("w", "h", "fx", "fy", "cx", "cy")
FRAME_KEYS = (*NUMBER_KEYS, "w2c", "file_path")


class Invalid(AssertionError):
    """The reader accepted an input but returned something unusable."""


class CaseTimeout(Exception):
    pass


@dataclass
class Case:
    description: str
    camera: bytes | None = None  # new opencv_cameras.json bytes; None = the valid file
    listing: bytes | None = None  # new list file bytes; None = the valid list
    png: bytes | None = None  # new bytes of frame 0's PNG; None = the valid image

    def __str__(self) -> str:
        parts = [self.description]
        for name in ("camera", "listing", "png"):
            value = getattr(self, name)
            if value is not None:
                shown = value[:200] + (b"..." if len(value) > 200 else b"")
                parts.append(f"{name} ({len(value)} bytes): {shown!r}")
        return "\n    ".join(parts)


# ---------------------------------------------------------------------------------------
# fixture: one valid sample, a list file naming it, and a dataset config


@dataclass
class Workspace:
    root: Path
    sample: Path
    list_file: Path
    camera_bytes: bytes
    camera: dict[str, Any]
    png_path: Path
    png_bytes: bytes
    config: Any
    counter: int = 0
    last_outcome: str = ""

    def fresh_cache(self) -> str:
        """A new view-cache folder per case: a warm cache must not hide what a case does."""
        self.counter += 1
        return str(self.root / "caches" / f"c{self.counter:05d}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("fuzz")
    summary = generate_dataset(root / "gen", samples=3, size=SIZE, seed=0)
    source = Path(summary["out_dir"]) / "samples" / "000000"
    sample = root / "sample"
    shutil.copytree(source, sample)
    list_file = root / "list.txt"
    list_file.write_text("sample\n")
    camera_bytes = (sample / CAMERA_FILE).read_bytes()
    camera = json.loads(camera_bytes)
    png_path = sample / camera["frames"][0]["file_path"]
    config = load_config(
        REPO / "configs" / "smoke.yaml",
        [
            f"model.image_tokenizer.image_size={SIZE}",
            f"training.dataset.dataset_path={list_file}",
            "mouse.use_mouse_dataset=true",
        ],
    )
    ws = Workspace(
        root, sample, list_file, camera_bytes, camera, png_path, png_path.read_bytes(), config
    )
    # The untouched sample must pass every check, or the fuzz proves nothing.
    failure = run_case(ws, Case("no mutation"))
    assert failure is None, failure
    assert ws.last_outcome == "loaded"
    return ws


# ---------------------------------------------------------------------------------------
# validity of what the reader returns


def check_rigid(matrix: np.ndarray, what: str, atol: float) -> None:
    if matrix.shape != (4, 4):
        raise Invalid(f"{what}: shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise Invalid(f"{what}: non-finite values {matrix.tolist()}")
    rotation = matrix[:3, :3]
    if (
        np.abs(rotation @ rotation.T - np.eye(3)).max() > atol
        or np.linalg.det(rotation) <= 0
        or np.abs(matrix[3] - [0, 0, 0, 1]).max() > atol
    ):
        raise Invalid(f"{what}: not rigid {matrix.tolist()}")


def check_sample(sample: Any) -> None:
    if not sample.frames:
        raise Invalid("sample without frames")
    for index, frame in enumerate(sample.frames):
        what = f"frame {index}"
        if not (
            isinstance(frame.width, int)
            and isinstance(frame.height, int)
            and frame.width > 0
            and frame.height > 0
        ):
            raise Invalid(f"{what}: size {frame.width!r} x {frame.height!r}")
        fx, fy, cx, cy = frame.intrinsics
        if not all(isinstance(v, float) and math.isfinite(v) for v in (fx, fy, cx, cy)):
            raise Invalid(f"{what}: intrinsics {frame.intrinsics!r}")
        if fx <= 0 or fy <= 0:
            raise Invalid(f"{what}: focal lengths {fx!r}, {fy!r}")
        check_rigid(np.asarray(frame.w2c, dtype=np.float64), f"{what} w2c", 1e-3)
        if not isinstance(frame.image_path, Path):
            raise Invalid(f"{what}: image_path {frame.image_path!r}")


def check_item(item: dict[str, torch.Tensor], num_views: int) -> None:
    for key, value in item.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise Invalid(f"item[{key!r}] has non-finite values")
    for prefix in ("input", "target"):
        images = item[f"{prefix}_images"]
        if images.shape[-3:] != (3, SIZE, SIZE) or images.min() < 0 or images.max() > 1:
            raise Invalid(
                f"{prefix}_images: shape {tuple(images.shape)}, range "
                f"[{float(images.min())}, {float(images.max())}]"
            )
        intrinsics = item[f"{prefix}_intrinsics"]
        if (intrinsics[:, :2] <= 0).any():
            raise Invalid(f"{prefix}_intrinsics: focal lengths {intrinsics.tolist()}")
        for view, c2w in enumerate(item[f"{prefix}_c2w"]):
            check_rigid(c2w.double().numpy(), f"{prefix}_c2w[{view}]", 1e-3)
    if item["target_images"].shape[0] != num_views:  # target_has_input: every selected view
        raise Invalid(
            f"target_images: {item['target_images'].shape[0]} views, expected {num_views}"
        )


# ---------------------------------------------------------------------------------------
# running one case


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout(f"one case took more than {CASE_LIMIT_S} s")


def exercise(ws: Workspace) -> str:
    """Read the (mutated) files as training does; returns how far it got."""
    try:
        folders = read_list_file(ws.list_file)
    except DataError:
        return "list refused"
    if not folders or not all(isinstance(f, Path) for f in folders):
        raise Invalid(f"read_list_file returned {folders!r}")
    for folder in folders:
        try:
            check_sample(read_sample(folder))
        except DataError:
            pass
    ws.config.training.dataset.cache_dir = ws.fresh_cache()
    try:
        dataset = MultiViewDataset(ws.list_file, ws.config)
        for index in range(len(dataset)):
            check_item(dataset[index], ws.config.training.dataset.num_views)
    except DataError:
        return "item refused"
    return "loaded"


def run_case(ws: Workspace, case: Case) -> str | None:
    """None when the reader behaved; else a failure report naming the mutation."""
    (ws.sample / CAMERA_FILE).write_bytes(ws.camera_bytes if case.camera is None else case.camera)
    ws.list_file.write_bytes(b"sample\n" if case.listing is None else case.listing)
    ws.png_path.write_bytes(ws.png_bytes if case.png is None else case.png)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    start = time.perf_counter()
    try:
        ws.last_outcome = exercise(ws)
        problem = None
    except (Invalid, CaseTimeout) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # the point of the test: only DataError may escape the reader
        ours = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if Path(f.filename).is_relative_to(REPO / "trainables")
        ]
        where = (
            f"{Path(ours[-1].filename).name}:{ours[-1].lineno} ({ours[-1].line})" if ours else "?"
        )
        problem = f"{type(exc).__name__} (not DataError) at {where}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    if problem is None and elapsed > CASE_LIMIT_S:
        problem = f"took {elapsed:.1f} s"
    return None if problem is None else f"{problem}\n    mutation: {case}"


# ---------------------------------------------------------------------------------------
# mutations


def dumps(data: Any) -> bytes:
    return json.dumps(data, indent=1).encode()  # writes NaN / Infinity for non-finite floats


def pick_frame(rng: random.Random, data: dict) -> dict:
    return rng.choice(data["frames"])


def set_number(rng: random.Random, data: dict, values: list[Any]) -> str:
    """Put one of `values` into a random number field or w2c entry of a random frame."""
    index = rng.randrange(len(data["frames"]))
    frame = data["frames"][index]
    value = rng.choice(values)
    if rng.random() < 0.5:
        key = rng.choice(NUMBER_KEYS)
        frame[key] = value
        return f"frame {index} {key} = {value!r}"[:120]
    row, col = rng.randrange(4), rng.randrange(4)
    frame["w2c"][row][col] = value
    return f"frame {index} w2c[{row}][{col}] = {value!r}"[:120]


def m_delete_keys(rng: random.Random, base: dict) -> Case:
    data = copy.deepcopy(base)
    roll = rng.random()
    if roll < 0.15:
        key = rng.choice(["frames", "id"])
        del data[key]
        return Case(f"delete top-level {key!r}", dumps(data))
    deleted = []
    for _ in range(rng.randint(1, 3)):
        index = rng.randrange(len(data["frames"]))
        key = rng.choice(FRAME_KEYS)
        data["frames"][index].pop(key, None)
        deleted.append(f"frame {index} {key}")
    return Case(f"delete {', '.join(deleted)}", dumps(data))


JUNK = [None, True, False, "1", "", "32", [], {}, [1], [32, 32], {"value": 32}, 0, -1, 1.5, "nan"]


def m_change_types(rng: random.Random, base: dict) -> Case:
    data = copy.deepcopy(base)
    roll = rng.random()
    if roll < 0.15:
        value = rng.choice(
            [None, {}, "frames", 3, [1, 2], [None], [[]], [{}], {"0": base["frames"][0]}]
        )
        data["frames"] = value
        return Case(f"frames = {value!r}"[:120], dumps(data))
    if roll < 0.25:
        value = rng.choice([None, [], {}, 5, "x", base["frames"]])
        return Case(f"whole document = {value!r}"[:120], dumps(value))
    index = rng.randrange(len(data["frames"]))
    key = rng.choice(FRAME_KEYS)
    value = rng.choice(
        JUNK + [42, "images/cam_01.png", "/", ".", "images", "../sample/images/cam_00.png"]
    )
    data["frames"][index][key] = value
    return Case(f"frame {index} {key} = {value!r}", dumps(data))


def m_w2c_shapes(rng: random.Random, base: dict) -> Case:
    data = copy.deepcopy(base)
    index = rng.randrange(len(data["frames"]))
    w2c = data["frames"][index]["w2c"]
    shapes: dict[str, Any] = {
        "3x4": w2c[:3],
        "4x3": [row[:3] for row in w2c],
        "flat 16": [v for row in w2c for v in row],
        "4x4x1": [[[v] for v in row] for row in w2c],
        "5x5": [row + [0.0] for row in w2c] + [[0.0] * 5],
        "ragged": [w2c[0], w2c[1][:2], w2c[2], w2c[3]],
        "empty": [],
        "scalar": 1.0,
        "strings": [[str(v) for v in row] for row in w2c],
        "dict rows": [{"a": v} for v in w2c[0]],
        "nulls": [[None] * 4 for _ in range(4)],
        "bools": [[r == c for c in range(4)] for r in range(4)],
        "scaled rotation": [[v * 2 for v in row[:3]] + [row[3]] for row in w2c[:3]] + [w2c[3]],
        "reflection": [[-v for v in w2c[0][:3]] + [w2c[0][3]], w2c[1], w2c[2], w2c[3]],
        "bad last row": w2c[:3] + [[0.0, 0.0, 1.0, 1.0]],
        "zeros": [[0.0] * 4 for _ in range(4)],
        "transposed": [list(col) for col in zip(*w2c, strict=True)],
    }
    name = rng.choice(sorted(shapes))
    data["frames"][index]["w2c"] = shapes[name]
    return Case(f"frame {index} w2c: {name}", dumps(data))


def m_non_finite(rng: random.Random, base: dict) -> Case:
    data = copy.deepcopy(base)
    what = set_number(rng, data, [float("nan"), float("inf"), float("-inf")])
    text = dumps(data)
    if rng.random() < 0.3:  # also as number literals that overflow on parsing
        text = text.replace(b"Infinity", b"1e999")
        what += " (written as 1e999)"
    return Case(what, text)


HUGE = "HUGE-INTEGER-PLACEHOLDER"


def m_huge_ints(rng: random.Random, base: dict) -> Case:
    """Integers beyond float range, some beyond Python's 4300-digit int parsing limit (written as
    text: json.dumps cannot write those)."""
    data = copy.deepcopy(base)
    digits = rng.choice([rng.randint(310, 600), rng.randint(4301, 6000)])
    sign = rng.choice(["", "-"])
    what = set_number(rng, data, [HUGE]).replace(repr(HUGE), f"{sign}1e{digits - 1} as an integer")
    return Case(
        what,
        dumps(data).replace(json.dumps(HUGE).encode(), f"{sign}1{'0' * (digits - 1)}".encode()),
    )


def m_huge_floats(rng: random.Random, base: dict) -> Case:
    data = copy.deepcopy(base)
    values = [1e39, 3.5e38, 1e100, 1e300, -1e300, 1.7e308]
    frame = rng.randrange(len(data["frames"]))
    if rng.random() < 0.5:
        key = rng.choice(["fx", "fy", "cx", "cy"])
        # fx / fy also below float32's range: positive here, 0 after the cast
        tiny = [1e-50, 1e-320] if key in ("fx", "fy") else []
        data["frames"][frame][key] = rng.choice(values + tiny)
        what = f"frame {frame} {key} = {data['frames'][frame][key]!r}"
    else:
        row = rng.randrange(3)  # a huge translation keeps the matrix rigid
        data["frames"][frame]["w2c"][row][3] = rng.choice(values)
        what = f"frame {frame} w2c[{row}][3] = {data['frames'][frame]['w2c'][row][3]!r}"
    return Case(what, dumps(data))


def m_bad_intrinsics(rng: random.Random, base: dict) -> Case:
    data = copy.deepcopy(base)
    index = rng.randrange(len(data["frames"]))
    key = rng.choice(["w", "h", "fx", "fy"])
    value = rng.choice([0, 0.0, -1, -32, -1e-9, 31.5, 32.0000001, -0.0])
    data["frames"][index][key] = value
    return Case(f"frame {index} {key} = {value!r}", dumps(data))


def m_truncated_json(rng: random.Random, base: dict) -> Case:
    text = dumps(base)
    cut = rng.randrange(len(text))
    return Case(f"JSON cut at byte {cut} of {len(text)}", text[:cut])


def m_random_bytes(rng: random.Random, base: dict) -> Case:
    roll = rng.random()
    if roll < 0.4:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
        return Case("random bytes", data)
    text = bytearray(dumps(base))
    for _ in range(rng.randint(1, 8)):
        text[rng.randrange(len(text))] = rng.randrange(256)
    return Case("valid JSON with random bytes overwritten", bytes(text))


def m_non_utf8(rng: random.Random, base: dict) -> Case:
    text = dumps(base)
    roll = rng.random()
    if roll < 0.3:
        return Case("UTF-16 encoded JSON", json.dumps(base).encode("utf-16"))
    if roll < 0.5:
        return Case("UTF-8 byte order mark", b"\xef\xbb\xbf" + text)
    if roll < 0.7:
        return Case("Latin-1 id", json.dumps({**base, "id": "souris-\xe9"}).encode("latin-1"))
    position = rng.randrange(len(text))
    bad = rng.choice([b"\xff", b"\xfe", b"\xc3", b"\x80", b"\xed\xa0\x80"])
    return Case(
        f"invalid UTF-8 {bad!r} at byte {position}", text[:position] + bad + text[position:]
    )


def m_nested_garbage(rng: random.Random, base: dict) -> Case:
    data = copy.deepcopy(base)
    depth = rng.randint(2, 40)
    value: Any = rng.choice([1.0, "x", None, {}])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {rng.choice(["frames", "w", "w2c"]): value}
    where = rng.choice(["frames", "frame", "key", "w2c row"])
    if where == "frames":
        data["frames"] = value
    elif where == "frame":
        data["frames"][rng.randrange(len(data["frames"]))] = value
    elif where == "key":
        data["frames"][0][rng.choice(FRAME_KEYS)] = value
    else:
        data["frames"][0]["w2c"][rng.randrange(4)] = value
    return Case(f"nested garbage (depth {depth}) as {where}", dumps(data))


def m_deep_nesting(rng: random.Random, base: dict) -> Case:
    depth = rng.choice([2_000, 10_000, 100_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    return Case(
        f"frames nested {depth} deep",
        b'{"id": "x", "frames": ' + opener * depth + b"1" + closer * depth + b"}",
    )


def m_list_file(rng: random.Random, base: dict) -> Case:
    entries = [
        b"",
        b"   ",
        b"\t",
        b"# a comment",
        b"sample",
        b" sample ",
        b"./sample",
        b"sample/",
        b"missing_sample",
        b"sample/" + CAMERA_FILE.encode(),
        b"sample/images/cam_00.png",
        b"list.txt",
        b"/",
        b"..",
        b"/nonexistent/sample",
        b"sam\x00ple",
        b"\xff\xfe",
        b"sample\r",
        b"caches",
    ]
    lines = [rng.choice(entries) for _ in range(rng.randint(0, 4))]
    separator = rng.choice([b"\n", b"\r\n", b"\n\n"])
    text = separator.join(lines) + rng.choice([b"", b"\n"])
    return Case("list file lines", listing=text)


def m_list_long_names(rng: random.Random, base: dict) -> Case:
    name = b"s" * rng.randint(256, 2000)
    lines = rng.choice([[name], [b"sample", name], [name, b"sample"], [b"sample/" + name]])
    return Case(f"list entry with a {len(name)}-character name", listing=b"\n".join(lines) + b"\n")


def m_bad_file_path(rng: random.Random, base: dict) -> Case:
    data = copy.deepcopy(base)
    index = rng.randrange(len(data["frames"]))
    value = rng.choice(["images/cam\x00_00.png", "\x00", "images/\ud800.png", "\udfff"])
    data["frames"][index]["file_path"] = value
    return Case(f"frame {index} file_path = {value!r}", dumps(data))


def png_with_size(data: bytes, width: int, height: int) -> bytes:
    """The same PNG with its header saying width x height (CRC fixed)."""
    out = bytearray(data)
    out[16:24] = struct.pack(">II", width, height)
    out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    return bytes(out)


def m_png_corrupt(rng: random.Random, base: dict, png: bytes) -> Case:
    roll = rng.random()
    if roll < 0.25:
        cut = rng.randrange(len(png))
        return Case(f"PNG cut at byte {cut} of {len(png)}", png=png[:cut])
    if roll < 0.5:
        out = bytearray(png)
        for _ in range(rng.randint(1, 6)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return Case("PNG with random bytes overwritten", png=bytes(out))
    if roll < 0.65:
        return Case(
            "random bytes as PNG", png=bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        )
    if roll < 0.8:
        size = rng.choice([(16, 16), (SIZE, SIZE + 1), (1, 1)])
        buffer = io.BytesIO()
        Image.new("RGBA", size, (255, 0, 0, 255)).save(buffer, "PNG")
        return Case(f"PNG of size {size}", png=buffer.getvalue())
    size = rng.choice([(0, 0), (SIZE, 0), (1, SIZE), (SIZE * 2, SIZE)])
    return Case(f"PNG header says {size} (data for {SIZE}x{SIZE})", png=png_with_size(png, *size))


def m_png_huge_header(rng: random.Random, base: dict, png: bytes) -> Case:
    size = (rng.randint(20_000, 60_000), rng.randint(20_000, 60_000))
    return Case(f"PNG header says {size[0]}x{size[1]}", png=png_with_size(png, *size))


Mutator = Callable[..., Case]
KINDS: dict[str, Mutator] = {
    "delete_keys": m_delete_keys,
    "change_types": m_change_types,
    "w2c_shapes": m_w2c_shapes,
    "non_finite": m_non_finite,
    "huge_ints": m_huge_ints,
    "huge_floats": m_huge_floats,
    "bad_intrinsics": m_bad_intrinsics,
    "truncated_json": m_truncated_json,
    "random_bytes": m_random_bytes,
    "non_utf8": m_non_utf8,
    "nested_garbage": m_nested_garbage,
    "deep_nesting": m_deep_nesting,
    "list_file": m_list_file,
    "list_long_names": m_list_long_names,
    "bad_file_path": m_bad_file_path,
    "png_corrupt": m_png_corrupt,
    "png_huge_header": m_png_huge_header,
}
PNG_KINDS = {"png_corrupt", "png_huge_header"}

BUGS = {
    "huge_ints": "reader.py _number/_rigid_w2c: an integer beyond float range (1e400 written without "
    "a dot) raises OverflowError; read_sample: one over 4300 digits raises ValueError "
    "from json.loads; neither is a DataError",
    "huge_floats": "reader accepts fx/cx/translation up to 1.8e308 (and fx down to 1e-320); "
    "MultiViewDataset casts to float32 and returns inf (or 0) intrinsics / c2w",
    "deep_nesting": "reader.py read_sample: json.loads raises RecursionError on deeply nested JSON",
    "list_long_names": "reader.py read_sample: folder.is_dir() raises OSError (File name too long) for a "
    "list entry with a name over 255 bytes",
    "bad_file_path": "reader.py load_view/_cache_path: stat() raises ValueError for a file_path with "
    "a NUL or an unencodable character; only OSError is caught",
    "png_huge_header": "reader.py _decode_resized: PIL's DecompressionBombError (a PNG declaring "
    "> 179 M pixels) is not caught",
}


def kind_params() -> list[Any]:
    params = []
    for name in KINDS:
        marks = []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("kind", kind_params())
def test_fuzz_reader(workspace: Workspace, kind: str) -> None:
    rng = random.Random(f"{SEED}-{kind}")
    mutate = KINDS[kind]
    failures, outcomes = [], {}
    start = time.perf_counter()
    for iteration in range(ITERATIONS_PER_KIND):
        case = (
            mutate(rng, workspace.camera, workspace.png_bytes)
            if kind in PNG_KINDS
            else mutate(rng, workspace.camera)
        )
        failure = run_case(workspace, case)
        if failure is not None:
            failures.append(f"[{kind} #{iteration}] {failure}")
        else:
            outcomes[workspace.last_outcome] = outcomes.get(workspace.last_outcome, 0) + 1
    print(f"{kind}: {outcomes}, {len(failures)} failures in {time.perf_counter() - start:.2f} s")
    assert not failures, (
        f"{len(failures)} of {ITERATIONS_PER_KIND} cases misbehaved:\n" + "\n".join(failures[:8])
    )
    # A kind that never reaches the reader's checks (everything refused by an earlier one) or
    # never gets refused tests little: the error kinds must be refused at least sometimes.
    if kind not in ("list_file",):
        assert outcomes.get("list refused", 0) + outcomes.get("item refused", 0) > 0, outcomes


# ---------------------------------------------------------------------------------------
# the reader bugs the fuzz finds, one deterministic case each


def _write_camera(ws: Workspace, data: Any) -> None:
    (ws.sample / CAMERA_FILE).write_bytes(dumps(data))


@pytest.fixture
def clean(workspace: Workspace):
    """Restore the valid files after a targeted test."""
    yield workspace
    run_case(workspace, Case("restore"))


@pytest.mark.parametrize("field,digits", [("fx", 400), ("w2c", 400), ("fx", 5000)])
def test_integer_beyond_float_range_is_a_data_error(
    clean: Workspace, field: str, digits: int
) -> None:
    data = copy.deepcopy(clean.camera)
    if field == "fx":
        data["frames"][0]["fx"] = HUGE
    else:
        data["frames"][0]["w2c"][0][3] = HUGE
    text = dumps(data).replace(json.dumps(HUGE).encode(), b"1" + b"0" * digits)
    (clean.sample / CAMERA_FILE).write_bytes(text)
    with pytest.raises(DataError, match=CAMERA_FILE):
        read_sample(clean.sample)


def test_deeply_nested_camera_json_is_a_data_error(clean: Workspace) -> None:
    (clean.sample / CAMERA_FILE).write_bytes(
        b'{"frames": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    )
    with pytest.raises(DataError, match=CAMERA_FILE):
        read_sample(clean.sample)


@pytest.mark.parametrize("where", ["fx", "translation"])
def test_values_beyond_float32_do_not_reach_the_model(clean: Workspace, where: str) -> None:
    data = copy.deepcopy(clean.camera)
    if where == "fx":
        data["frames"][0]["fx"] = 1e300
    else:
        data["frames"][0]["w2c"][0][3] = 1e300
    _write_camera(clean, data)
    clean.config.training.dataset.cache_dir = clean.fresh_cache()
    try:
        item = MultiViewDataset(clean.list_file, clean.config)[0]
    except DataError:
        return  # refusing the camera is the fix
    check_item(item, clean.config.training.dataset.num_views)


def test_over_long_list_entry_is_a_data_error(clean: Workspace) -> None:
    clean.list_file.write_text("s" * 300 + "\n")
    (folder,) = read_list_file(clean.list_file)
    with pytest.raises(DataError):
        read_sample(folder)


def test_file_path_with_nul_is_a_data_error(clean: Workspace) -> None:
    data = copy.deepcopy(clean.camera)
    data["frames"][0]["file_path"] = "images/cam\x00_00.png"
    _write_camera(clean, data)
    clean.config.training.dataset.cache_dir = clean.fresh_cache()
    with pytest.raises(DataError):
        MultiViewDataset(clean.list_file, clean.config)[0]


def test_png_declaring_a_huge_size_is_a_data_error(clean: Workspace) -> None:
    clean.png_path.write_bytes(png_with_size(clean.png_bytes, 30_000, 30_000))
    clean.config.training.dataset.cache_dir = clean.fresh_cache()
    with pytest.raises(DataError, match=clean.png_path.name):
        MultiViewDataset(clean.list_file, clean.config)[0]


def test_camera_size_mismatch_is_refused_with_a_warm_cache(clean: Workspace) -> None:
    cache = clean.fresh_cache()
    clean.config.training.dataset.cache_dir = cache
    MultiViewDataset(clean.list_file, clean.config)[0]  # warms the cache with the valid views
    data = copy.deepcopy(clean.camera)
    data["frames"][0]["w"] = data["frames"][0]["h"] = 64  # the PNG is 32 x 32
    _write_camera(clean, data)
    clean.config.training.dataset.cache_dir = clean.fresh_cache()
    with pytest.raises(DataError, match="64x64"):  # without a cache: refused, naming the sizes
        MultiViewDataset(clean.list_file, clean.config)[0]
    clean.config.training.dataset.cache_dir = cache
    with pytest.raises(DataError, match="64x64"):  # with the warm cache: the same answer
        MultiViewDataset(clean.list_file, clean.config)[0]
