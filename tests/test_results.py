"""docs/results.md is generated from study folders: command, seeds, tables, one picture per level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from analysis.report import write_report
from analysis.results import main, shown_path, study_command
from tests.test_analysis import MOUSE_FG, N_ITEMS, RANDOM_FG, add_pairs, write_eval, write_study


def test_results_page_from_a_study_folder(tmp_path: Path) -> None:
    study_dir = write_study(tmp_path / "studies", size="cpu", smoke=False)
    add_pairs(study_dir, RANDOM_FG, MOUSE_FG)
    for seed in (1, 2, 3):  # held-out items: mouse 1 dB better, the test list at /data/mice
        base = np.full((N_ITEMS, 6), 20.0 + seed)
        write_eval(study_dir, f"r{seed:04d}_00000", base)
        write_eval(study_dir, f"m{seed:04d}_00000", base + 1.0 + 0.1 * seed)
    for trial in ("r0001_00000", "m0001_00000"):  # a validation picture for seed 1 of each level
        folder = study_dir / "runs" / trial / "pictures"
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8), (255, 0, 0) if trial[0] == "r" else (0, 0, 255)).save(
            folder / "val_00000300.png"
        )
    write_report(study_dir)
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    assert main([str(study_dir), "--out", str(out)]) == 0
    text = out.read_text()
    assert "`python -m study.run view_order_ablation --size cpu`" in text
    assert "seeds [1, 2, 3]" in text and "6 trials (6 finished)" in text
    # the seed-level sentence of the report: mouse wins by the mean paired difference 2.0 dB
    assert "Fixed rig order (mouse) beats random by 2.00 dB foreground PSNR" in text
    pictures = tmp_path / "docs" / "results" / "view_order_ablation"
    assert Image.open(pictures / "dataset_type_random.png").getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(pictures / "dataset_type_mouse.png").getpixel((0, 0)) == (0, 0, 255)
    assert "](results/view_order_ablation/dataset_type_mouse.png)" in text
    assert (pictures / "factor_dataset_type.png").stat().st_size > 1000
    # a picture left from an earlier generation that the page no longer shows is removed
    stale = pictures / "masked_ssim_on.png"
    Image.new("RGB", (8, 8)).save(stale)
    assert main([str(study_dir), "--out", str(out)]) == 0
    assert not stale.exists() and (pictures / "dataset_type_mouse.png").exists()
    gone = tmp_path / "docs" / "results" / "mask_loss_ablation"  # a study no longer on the page
    gone.mkdir()
    Image.new("RGB", (8, 8)).save(gone / "masked_l2_on.png")
    assert main([str(study_dir), "--out", str(out)]) == 0
    assert not gone.exists()
    assert main([str(tmp_path / "nothing"), "--out", str(out)]) == 2
    # no absolute path on the page: the test list is named by its folder and file
    page = out.read_text()
    assert str(tmp_path) not in page and "/data/mice" not in page
    assert "`mice/data_test.txt`" in page
    assert "Seeds these questions need" in page and "Study view_order_ablation:" in page


def test_results_command_and_paths_are_reproducible_and_relative(tmp_path: Path) -> None:
    record = {
        "study": "view_order_ablation",
        "size": "cpu",
        "plan": {"until_decided": True, "max_seeds": 10, "margin_args": ["psnr_fg=0.3"]},
    }
    assert study_command(record) == (
        "python -m study.run view_order_ablation --size cpu --until-decided --max-seeds 10 "
        "--margin psnr_fg=0.3"
    )
    record["plan"] = {"seeds": [0, 1]}  # as study.run's --seeds parses them
    assert study_command(record) == "python -m study.run view_order_ablation --size cpu --seeds 0,1"
    study_dir = tmp_path / "studies" / "view_order_ablation"
    inside = tmp_path / "studies" / "_data" / "mouse6" / "data_test.txt"
    assert shown_path(str(inside), study_dir) == "_data/mouse6/data_test.txt"
    assert shown_path("/elsewhere/mice/data_test.txt", study_dir) == "mice/data_test.txt"
