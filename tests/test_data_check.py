"""`python -m trainables.gslrm.data.check`: good data passes, every bad file is named once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.gslrm.data.check import check_list, main

SIZE = 16


def write_sample(folder: Path, n_views: int = 6) -> None:
    (folder / "images").mkdir(parents=True)
    frames = []
    for k in range(n_views):
        rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
        rgba[4:12, 4:12] = (10 * k, 100, 50, 255)
        Image.fromarray(rgba, "RGBA").save(folder / "images" / f"{k}.png")
        angle = 2 * np.pi * k / n_views
        rotation = np.array(
            [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        )
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = rotation, [0.0, 0.0, 2.5]
        frames.append(
            {
                "w": SIZE,
                "h": SIZE,
                "fx": 20.0,
                "fy": 20.0,
                "cx": 8.0,
                "cy": 8.0,
                "w2c": w2c.tolist(),
                "file_path": f"images/{k}.png",
            }
        )
    (folder / "opencv_cameras.json").write_text(json.dumps({"id": folder.name, "frames": frames}))


def write_dataset(root: Path, names: tuple[str, ...] = ("a", "b", "c")) -> Path:
    for name in names:
        write_sample(root / "samples" / name)
    list_file = root / "data_train.txt"
    list_file.write_text("".join(f"samples/{n}\n" for n in names))
    return list_file


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_generated_dataset_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic = pytest.importorskip("trainables.gslrm.data.synthetic")
    summary = synthetic.generate_dataset(tmp_path / "gen", samples=4, size=32, rig="mouse6", seed=1)
    before = sorted(tmp_path.rglob("*"))
    for key, count in (("train_list", 3), ("val_list", 1)):
        code, lines, err = run_main(
            [summary[key], "--num-views", "6", "--image-size", "32"], capsys
        )
        assert code == 0, lines
        assert lines == [f"{count} samples, {count} usable, 0 problems"]
        assert err == ""
    assert check_list(summary["train_list"], 6, 64) == []
    # checking writes nothing: no .view_cache beside the list file
    assert sorted(tmp_path.rglob("*")) == before


def test_bad_png_and_bad_json_are_each_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    list_file = write_dataset(tmp_path)
    bad_png = tmp_path / "samples" / "a" / "images" / "3.png"
    bad_png.write_bytes(bad_png.read_bytes()[:40])
    bad_json = tmp_path / "samples" / "c" / "opencv_cameras.json"
    bad_json.write_text('{"id": "c", "frames": [')

    code, lines, _ = run_main([str(list_file), "--image-size", "32"], capsys)
    assert code == 1
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{bad_png}: cannot decode image")
    assert lines[1].startswith(f"{bad_json}: invalid JSON")
    assert lines[2] == "3 samples, 1 usable, 2 problems"
    assert check_list(list_file, 6, 32) == lines[:2]


def test_every_bad_view_of_a_sample_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    list_file = write_dataset(tmp_path, ("a", "b"))
    images = tmp_path / "samples" / "b" / "images"
    (images / "0.png").unlink()
    Image.new("RGBA", (SIZE, SIZE + 1)).save(images / "5.png")
    code, lines, _ = run_main([str(list_file)], capsys)
    assert code == 1
    assert lines == [
        f"{images / '0.png'}: image file not found",
        f"{images / '5.png'}: image is {SIZE}x{SIZE + 1} but the camera file says {SIZE}x{SIZE}",
        "2 samples, 1 usable, 2 problems",
    ]


def test_every_problem_of_a_two_problem_sample_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    list_file = write_dataset(tmp_path, ("a", "b"))
    folder = tmp_path / "samples" / "a"
    camera_file = folder / "opencv_cameras.json"
    data = json.loads(camera_file.read_text())
    data["frames"][1]["w2c"] = [[1, 0, 0], [0, 1, 0]]  # malformed w2c, image fine
    data["frames"][4]["w2c"] = "identity"  # malformed w2c and, below, a truncated PNG
    data["frames"][4]["fx"] = -3.0  # and a bad intrinsic in the same frame
    camera_file.write_text(json.dumps(data))
    for k in (2, 4):
        png = folder / "images" / f"{k}.png"
        png.write_bytes(png.read_bytes()[:40])

    code, lines, _ = run_main([str(list_file)], capsys)
    assert code == 1
    assert len(lines) == 6, lines
    assert lines[0] == f"{camera_file} frame 1: 'w2c' must be 4x4, got shape [2, 3]"
    assert lines[1].startswith(f"{folder / 'images' / '2.png'}: cannot decode image")
    assert lines[2] == f"{camera_file} frame 4: 'fx' must be > 0, got -3.0"
    assert lines[3] == f"{camera_file} frame 4: 'w2c' must be a 4x4 list of numbers"
    assert lines[4].startswith(f"{folder / 'images' / '4.png'}: cannot decode image")
    assert lines[5] == "2 samples, 1 usable, 5 problems"
    assert all("\n" not in line for line in lines)


def test_too_few_views_for_num_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    list_file = write_dataset(tmp_path, ("a",))
    code, lines, _ = run_main([str(list_file), "--num-views", "7", "--image-size", "8"], capsys)
    assert code == 1
    assert lines == [
        f"{tmp_path / 'samples' / 'a'}: has 6 views, fewer than num_views=7",
        "1 samples, 0 usable, 1 problems",
    ]
    assert run_main([str(list_file), "--num-views", "6", "--image-size", "8"], capsys)[0] == 0


def test_missing_sample_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    list_file = write_dataset(tmp_path, ("a",))
    list_file.write_text("samples/a\nsamples/gone\n")
    code, lines, _ = run_main([str(list_file)], capsys)
    assert code == 1
    assert lines == [
        f"{tmp_path / 'samples' / 'gone'}: sample folder not found",
        "2 samples, 1 usable, 1 problems",
    ]


@pytest.mark.parametrize("content", [None, "", "\n# nothing here\n"])
def test_missing_or_empty_list_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    list_file = tmp_path / "data_train.txt"
    if content is not None:
        list_file.write_text(content)
    code, lines, err = run_main([str(list_file)], capsys)
    assert code == 2
    assert lines == []
    assert err.startswith(f"{list_file}: list file")


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    list_file = write_dataset(tmp_path, ("a",))
    with pytest.raises(SystemExit) as info:
        main([str(list_file), "--image-size", "0"])
    assert info.value.code == 2
    assert "--image-size" in capsys.readouterr().err


def test_module_entry_point(tmp_path: Path) -> None:
    list_file = write_dataset(tmp_path, ("a", "b"))
    bad_json = tmp_path / "samples" / "b" / "opencv_cameras.json"
    bad_json.write_text("[]")
    result = subprocess.run(
        [sys.executable, "-m", "trainables.gslrm.data.check", str(list_file), "--image-size", "16"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"{bad_json}: expected an object with a non-empty 'frames' list",
        "2 samples, 1 usable, 1 problems",
    ]
