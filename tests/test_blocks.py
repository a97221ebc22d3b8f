"""Issue 22 item 7: correlated items. A list file's block sidecar (FaceLift's list format
unchanged), the block carried into items.parquet, and the analysis treating blocks, not
single items, as independent."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis import paired
from analysis.factors import DATASET_TYPE
from analysis.plan import within_seed_variance
from trainables.gslrm.data.reader import (
    DataError,
    block_file,
    consecutive_blocks,
    parse_blocks,
    read_blocks,
    read_list_file,
)


def write_list(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data_test.txt").write_text("".join(f"{n}\n" for n in names))
    return root / "data_test.txt"


def test_sidecar_name_and_consecutive_blocks() -> None:
    assert block_file("/d/data_test.txt") == Path("/d/data_test.blocks.tsv")
    assert consecutive_blocks(7, 3) == ["0", "0", "0", "1", "1", "1", "2"]
    with pytest.raises(DataError, match="block size must be >= 1"):
        consecutive_blocks(3, 0)


def test_keyed_blocks_follow_the_list_order(tmp_path) -> None:
    listed = write_list(tmp_path, ["f2", "f0", "f1"])
    block_file(listed).write_text("# session per frame\nf0\tsessionA\nf1\tsessionA\nf2\tsessionB\n")
    folders = read_list_file(listed)  # the list itself is read exactly as before
    assert [f.name for f in folders] == ["f2", "f0", "f1"]
    assert read_blocks(listed, folders) == ["sessionB", "sessionA", "sessionA"]


def test_consecutive_directive_and_no_sidecar(tmp_path) -> None:
    listed = write_list(tmp_path, [f"frame_{i:04d}" for i in range(5)])
    folders = read_list_file(listed)
    assert read_blocks(listed, folders) is None  # no sidecar: each item its own block
    block_file(listed).write_text("@consecutive\t2\n")
    assert read_blocks(listed, folders) == ["0", "0", "1", "1", "2"]


def test_a_partial_or_foreign_block_file_is_refused(tmp_path) -> None:
    folders = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(DataError, match=r"no block for listed sample .*b \(1 missing\)"):
        parse_blocks("a\tx\n", tmp_path, folders, "blocks")
    with pytest.raises(DataError, match="names .*c, which the list file does not list"):
        parse_blocks("a\tx\nb\tx\nc\ty\n", tmp_path, folders, "blocks")
    with pytest.raises(DataError, match="line 1: expected"):
        parse_blocks("a x\n", tmp_path, folders, "blocks")
    with pytest.raises(DataError, match="expected '@consecutive<TAB><block size>'"):
        parse_blocks("@consecutive\tten\n", tmp_path, folders, "blocks")


def test_within_seed_variance_treats_blocks_as_the_units() -> None:
    """Seed 0: items 1, 3 (block X), 5, 11 (block Y); seed 1: 0, 0 (X), 2, 2 (Y).
    Items as units: var/4 = (56/3)/4 and (4/3)/4, mean 2.5. Blocks as units: block means
    2, 8 -> 18/2 = 9 and 0, 2 -> 2/2 = 1, mean 5."""
    values = {0: [1, 3, 5, 11], 1: [0, 0, 2, 2]}
    rows = [
        {"seed": s, "item_id": f"i{k}", "block": "XY"[k // 2], "psnr_fg": v}
        for s, vs in values.items()
        for k, v in enumerate(vs)
    ]
    frame = pd.DataFrame(rows)
    assert within_seed_variance(frame, "psnr_fg") == pytest.approx(5.0)
    assert within_seed_variance(frame.drop(columns="block"), "psnr_fg") == pytest.approx(2.5)
    # every item its own block reproduces the item formula
    own = frame.assign(block=frame["item_id"])
    assert within_seed_variance(own, "psnr_fg") == pytest.approx(2.5)


def blocked_tables(seeds: int = 3, items: int = 6, size: int = 3):
    trials, rows = [], []
    for seed in range(seeds):
        for mouse in (False, True):
            trial = f"t{seed}{int(mouse)}"
            trials.append(
                {
                    "trial_id": trial,
                    "seed": seed,
                    "mouse.use_mouse_dataset": mouse,
                    "training.runtime.seed": seed,
                }
            )
            for item in range(items):
                for camera in range(6):
                    rows.append(
                        {
                            "trial_id": trial,
                            "seed": seed,
                            "item_id": f"test_{item:06d}",
                            "block": str(item // size),
                            "camera": camera,
                            "role": "input" if camera < 5 else "novel",
                            **{m: 0.5 for m in paired.COMPARED_METRICS},
                            "psnr_fg": 20 + seed + item / 10 + 1.0 * mouse,
                        }
                    )
    return pd.DataFrame(rows), pd.DataFrame(trials)


def test_the_block_reaches_the_differences_verdicts_and_camera_table() -> None:
    items, trials = blocked_tables()
    diff = paired.paired_item_differences(items, trials, DATASET_TYPE, ["psnr_fg"])
    assert diff.groupby("item_id")["block"].first().tolist() == ["0", "0", "0", "1", "1", "1"]
    (result,) = paired.compare_items(items, trials, [DATASET_TYPE])
    verdict = result.confirmatory().result
    assert (verdict.n_items, verdict.n_blocks) == (6, 2)
    assert verdict.estimate == pytest.approx(1.0)
    assert "the items form 2 blocks of correlated items" in result.sentence
    assert set(result.per_camera["n_blocks"]) == {2}


def test_items_without_a_block_column_are_their_own_blocks() -> None:
    items, trials = blocked_tables()
    items = items.drop(columns="block")
    diff = paired.paired_item_differences(items, trials, DATASET_TYPE, ["psnr_fg"])
    assert (diff["block"] == diff["item_id"]).all()
    (result,) = paired.compare_items(items, trials, [DATASET_TYPE])
    assert result.confirmatory().result.n_blocks == 6
    assert "blocks of correlated" not in result.sentence
