"""docs/results.md is generated from study folders: command, seeds, tables, one picture per level."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from analysis.report import write_report
from analysis.results import main
from tests.test_analysis import MOUSE_FG, RANDOM_FG, add_pairs, write_study


def test_results_page_from_a_study_folder(tmp_path: Path) -> None:
    study_dir = write_study(tmp_path / "studies", size="cpu", smoke=False)
    add_pairs(study_dir, RANDOM_FG, MOUSE_FG)
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
    assert main([str(tmp_path / "nothing"), "--out", str(out)]) == 2
