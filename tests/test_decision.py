"""When is motion decided: the per-step change of x0 / velocity inside vs outside each object's token mask."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from wclab.conditions import load_json
from wclab.inspect import InspectError, decision_timeline, latent_cell_masks, plot_decision_timeline
from wclab.models.loading import load_models
from wclab.sampler import Session, Settings, StepRecord
from wclab.testing import make_tiny_checkpoints

CI = Path(__file__).resolve().parents[1] / "examples" / "ci"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 3-step run (high, high, low) of the CI ball scene on tiny generated models: F'=3, h=8, w=14."""
    models = load_models(make_tiny_checkpoints(tmp_path_factory.mktemp("tiny")), preview=False)
    s = Session(models, load_json(CI / "ball.json"), CI / "ball.png", Settings(steps=3, seed=1), progress=False)
    return s.run()


def fake_session(x0s, mask):
    """A stand-in with just what decision_timeline reads: history records and the token masks."""
    history = [StepRecord(i, 1000.0 - 500 * i, 1.0 - 0.5 * i, 0.5 - 0.5 * i, "high" if i == 0 else "low", None, None,
                          x0=x) for i, x in enumerate(x0s)]
    return SimpleNamespace(history=history, conditions=SimpleNamespace(token_masks={"7": mask}))


def test_one_row_per_field_step_object_and_region_and_the_regions_split_every_cell(run):
    table = decision_timeline(run)
    F, h, w = run.latents.shape[2:]
    assert len(table) == 2 * 3 * 2 * 2  # fields x steps x objects x regions
    assert set(table.field) == {"x0", "velocity"} and set(table.id) == {"1", "2"}
    assert list(table[(table.field == "x0") & (table.id == "1") & (table.region == "inside")].expert) == \
        ["high", "high", "low"]
    per = table.groupby(["field", "step", "id"])
    assert (per.cells.sum() == F * h * w).all()
    assert np.allclose(per.area.sum(), 1) and np.allclose(per.share.sum(), 1)


def test_the_change_is_the_difference_of_consecutive_predictions_inside_the_upsampled_mask(run):
    table = decision_timeline(run, fields="x0", objects=[1])
    token_mask = run.conditions.token_masks["1"][0, 0].numpy()  # [F', h/2, w/2]
    cells = torch.from_numpy(np.kron(token_mask, np.ones((1, 2, 2))) > 0)  # [F', h, w]
    assert torch.equal(latent_cell_masks(run, [1])["1"], cells)
    x0 = [r.x0[0].float() for r in run.history]  # [16, F', h, w]
    row = lambda step, region: table[(table.step == step) & (table.region == region)].iloc[0]
    assert row(1, "inside").norm == pytest.approx(float((x0[1] - x0[0])[:, cells].norm()), rel=1e-5)
    assert row(2, "outside").norm == pytest.approx(float((x0[2] - x0[1])[:, ~cells].norm()), rel=1e-5)
    assert row(0, "inside").norm == pytest.approx(float(x0[0][:, cells].norm()), rel=1e-5)  # first: from zero
    inside = row(1, "inside")
    assert inside.cells == int(cells.sum())
    assert inside.rms == pytest.approx(inside.norm / np.sqrt(16 * inside.cells))


def test_a_change_made_only_inside_the_mask_has_all_its_share_inside():
    mask = torch.zeros(1, 1, 2, 2, 3, dtype=torch.bool)
    mask[0, 0, 1, 0, 1] = True  # one token of frame 1 -> 2x2 latent cells
    x0 = torch.randn(1, 16, 2, 4, 6)
    moved = x0.clone()
    moved[:, :, 1, 0:2, 2:4] += 3.0  # exactly the mask's cells
    table = decision_timeline(fake_session([x0, moved], mask), fields="x0")
    step1 = table[table.step == 1].set_index("region")
    assert step1.loc["outside", "norm"] == 0 and step1.loc["inside", "share"] == 1
    assert step1.loc["inside", "norm"] == pytest.approx(3.0 * np.sqrt(16 * 4))
    assert step1.loc["inside", "cells"] == 4 and step1.loc["inside", "area"] == pytest.approx(4 / 48)
    only_frame_0 = decision_timeline(fake_session([x0, moved], mask), fields="x0", frames=[0])
    assert (only_frame_0[only_frame_0.region == "inside"].cells == 0).all()
    assert only_frame_0[only_frame_0.region == "inside"].rms.isna().all()


def test_the_plot_has_one_panel_per_field_and_object(run):
    fig = plot_decision_timeline(decision_timeline(run))
    assert len(fig.axes) == 2 * 2
    fig = plot_decision_timeline(decision_timeline(run, fields="velocity"), value="share", objects=["2"])
    assert len(fig.axes) == 1


def test_bad_requests_name_what_was_expected(run):
    with pytest.raises(InspectError, match="fields"):
        decision_timeline(run, fields="noise")
    with pytest.raises(InspectError, match="objects"):
        decision_timeline(run, objects=[3])
    with pytest.raises(InspectError, match="frames"):
        decision_timeline(run, frames=[5])
    bare = run.branch()
    bare.history = []
    with pytest.raises(InspectError, match="no recorded steps"):
        decision_timeline(bare)
    with pytest.raises(InspectError, match="value"):
        plot_decision_timeline(decision_timeline(run), value="mean")
