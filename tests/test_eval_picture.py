"""The evaluation's picture: the validation picture's five rows for the first evaluation item,
drawn with the evaluated (best) checkpoint, written atomically and named by protocol.json."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests.test_evaluate import data, make_run, tiny_config  # noqa: F401 - `data` is a fixture
from trainables.gslrm import evaluate as ev
from trainables.gslrm.checkpoint import checkpoint_name
from trainables.gslrm.model import GSLRM
from trainables.gslrm.visualize import validation_picture
from trainables.journal import TrialJournal
from trainables.pictures import evaluation_picture, last_validation_picture, run_pictures

pytestmark = pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")


def direct_picture(run, config, items: dict, step: int) -> np.ndarray:
    """The first test item drawn by hand with the checkpoint of `step`."""
    model = GSLRM(config.model)
    ev.load_weights(model, run / "checkpoints" / checkpoint_name(step))
    dataset = ev.MultiViewDataset(items["test_list"], ev.evaluation_config(config))
    batch = {k: v[None] for k, v in dataset[0].items()}
    with torch.no_grad():
        rgb = ev.render_targets(model.eval(), batch, config, torch.autocast("cpu", enabled=False))
    return validation_picture(
        batch["target_images"][0],
        rgb[0],
        batch["target_alpha"][0],
        background=batch["background"][0],
        mask_threshold=config.evaluation.pred_mask_threshold,
    )


def test_the_picture_shows_the_first_item_with_the_best_checkpoint(tmp_path, data) -> None:  # noqa: F811
    config = tiny_config(data, "evaluation.pred_mask_threshold=0.25")
    run = make_run(tmp_path / "run", config, {2: 15.0, 4: 11.0}, kept=[2, 4])  # best: step 2
    result = ev.evaluate_run(run, config)
    path = run / "eval" / "picture.png"
    written = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(written, direct_picture(run, config, data, 2))
    # the other checkpoint draws another picture: the file shows the evaluated one
    assert not np.array_equal(written, direct_picture(run, config, data, 4))
    assert json.loads((run / "eval" / "protocol.json").read_text())["picture"] == "picture.png"
    assert result.protocol["picture"] == "picture.png"
    event = TrialJournal.read(run).events[-1]
    assert (event["event"], event["picture"], event["step"]) == ("evaluated", "eval/picture.png", 2)
    assert not list((run / "eval").glob(".*.tmp"))
    found = evaluation_picture(run)
    assert found is not None and (found.path, found.step) == (path, 2)


def test_the_picture_leaves_the_numbers_as_they_were(tmp_path, data) -> None:  # noqa: F811
    config = tiny_config(data, "evaluation.checkpoint=last")
    run = make_run(tmp_path / "run", config, {2: 1.0}, kept=[2])
    with_picture = pq.read_table(ev.evaluate_run(run, config).items_path).to_pandas()
    model = GSLRM(config.model)
    ev.load_weights(model, run / "checkpoints" / checkpoint_name(2))
    dataset = ev.MultiViewDataset(data["test_list"], ev.evaluation_config(config))
    plain = ev.items_table(
        ev.score_items(model, dataset, ev.evaluation_config(config), torch.device("cpu"))
    )
    assert with_picture.equals(plain.to_pandas())


def test_a_picture_without_a_protocol_naming_it_does_not_count(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(run / "eval" / "picture.png")
    assert evaluation_picture(run) is None  # an evaluation that crashed before its protocol
    (run / "eval" / "protocol.json").write_text(json.dumps({"checkpoint_step": 3}))
    assert evaluation_picture(run) is None  # an evaluation from before pictures
    (run / "eval" / "protocol.json").write_text('{"picture": "picture.png", "checkpoint_step": 3}')
    assert evaluation_picture(run).step == 3


def test_the_last_validation_picture_is_the_highest_step(tmp_path) -> None:
    pictures = tmp_path / "run" / "pictures"
    pictures.mkdir(parents=True)
    assert run_pictures(tmp_path / "run").validation is None
    for name in ("val_00000090.png", "val_00000100.png", "val_00000020.png", ".val_x.png.a.tmp"):
        Image.new("RGB", (4, 4)).save(pictures / name, format="PNG")
    last = last_validation_picture(tmp_path / "run")
    assert last is not None and (last.path.name, last.step) == ("val_00000100.png", 100)
