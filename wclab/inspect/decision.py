"""When is motion decided? How much each denoising step changes the prediction inside each object's token mask
versus outside it, per step and expert.

For a recorded field (``x0``, the predicted clean latents, or ``velocity``, the CFG-combined flow velocity;
``[1, 16, F', h, w]`` per step) the change of step i is ``field[i] − field[i−1]``; the first recorded step's
change is its whole prediction (measured from 0, the prior mean of the normalised latents). Each object's token
mask ``[F', h/2, w/2]`` (the DiT token grid) is upsampled ×2 to latent cells ``[F', h, w]``; "inside" is the mask's
cells, "outside" every other cell of the selected latent frames. Steps where the change concentrates inside an
object's mask (large ``rms`` inside relative to outside, or ``share`` well above ``area``) are the ones that
move that object; the expert column tells whether the high-noise or the low-noise expert made them.

>>> s.run()                                         # Settings.record="full" keeps x0 and velocity per step
>>> table = decision_timeline(s)                    # one row per (field, step, object, region)
>>> plot_decision_timeline(table)                   # inside vs outside per step, expert shaded
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from wclab.inspect.attention import InspectError
from wclab.inspect.trajectory_latents import _stacked

DECISION_FIELDS = ("x0", "velocity", "cond", "uncond", "latents")


def latent_cell_masks(session, objects: Optional[Iterable[Union[int, str]]] = None) -> dict[str, torch.Tensor]:
    """id → bool ``[F', h, w]``: each object's token mask (``session.conditions.token_masks``, DiT tokens
    ``[F', h/2, w/2]``) upsampled ×2 (nearest) to latent cells. ``objects``: ids (default all with a mask)."""
    masks = session.conditions.token_masks
    ids = list(masks) if objects is None else [str(i) for i in objects]
    unknown = [i for i in ids if i not in masks]
    if unknown or not ids:
        raise InspectError(f"objects: expected ids with a token mask among {list(masks)}, got {ids}")
    return {i: masks[i][0, 0].detach().cpu().bool().repeat_interleave(2, 1).repeat_interleave(2, 2) for i in ids}


def decision_timeline(session, fields: Union[str, Sequence[str]] = ("x0", "velocity"),
                      objects: Optional[Iterable[Union[int, str]]] = None,
                      frames: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """Per recorded step, field and object: the norm of the step's change of ``field`` inside the object's token
    mask and outside it (a tidy table; see the module docstring for the definitions).

    session: a session with recorded steps (``Settings.record="full"`` for x0 / velocity). fields: any of
    "x0", "velocity", "cond", "uncond", "latents". objects: ids (default: every object with a token mask).
    frames: latent frames to include (default all; e.g. ``range(1, F')`` leaves out the start image's frame).

    Columns: field, step (history index), expert, timestep (0..1000), sigma, id, region ("inside" / "outside"),
    cells (latent cells × frames in the region), area (cells / all cells of the frames), norm (L2 norm of the
    change over the 16 channels and the region's cells, latent units), rms (norm / √(16·cells): the change per
    latent value), share (the region's fraction of the step's squared change norm over the frames; compare
    with area). A region without cells has NaN rms and share 0.
    """
    fields = [fields] if isinstance(fields, str) else list(fields)
    bad = [f for f in fields if f not in DECISION_FIELDS]
    if bad or not fields:
        raise InspectError(f"fields: expected some of {DECISION_FIELDS}, got {fields}")
    masks = latent_cell_masks(session, objects)
    rows = []
    for field in fields:
        idx, stack = _stacked(session, field, None)  # [n, 16, F', h, w] float32
        n_frames = stack.shape[2]
        chosen = list(range(n_frames)) if frames is None else [int(f) for f in frames]
        if not chosen or any(not 0 <= f < n_frames for f in chosen):
            raise InspectError(f"frames: expected latent frames in 0..{n_frames - 1}, got {chosen}")
        change = torch.diff(stack, dim=0, prepend=torch.zeros_like(stack[:1]))[:, :, chosen]  # [n, 16, f, h, w]
        energy = change.pow(2).sum(1)  # [n, f, h, w] squared norm per cell
        total = energy.flatten(1).sum(1)  # [n]
        n_cells = energy[0].numel()
        for obj_id, mask in masks.items():
            m = mask[chosen]
            for region, sel in (("inside", m), ("outside", ~m)):
                cells = int(sel.sum())
                e = energy[:, sel].sum(1) if cells else torch.zeros(len(idx))  # [n]
                for k, step in enumerate(idx):
                    rec = session.history[step]
                    norm = float(e[k].sqrt())
                    rows.append(dict(field=field, step=step, expert=rec.expert, timestep=rec.timestep,
                                     sigma=rec.sigma, id=obj_id, region=region, cells=cells, area=cells / n_cells,
                                     norm=norm, rms=norm / np.sqrt(16 * cells) if cells else float("nan"),
                                     share=float(e[k] / total[k]) if total[k] > 0 else 0.0))
    return pd.DataFrame(rows)


def plot_decision_timeline(table: pd.DataFrame, value: str = "rms", fields: Optional[Sequence[str]] = None,
                           objects: Optional[Sequence[str]] = None, size: tuple[float, float] = (3.2, 2.2)
                           ) -> plt.Figure:
    """One panel per (field, object) of a :func:`decision_timeline` table: ``value`` ("rms", "norm" or
    "share") per step inside the object's token mask (solid) and outside it (dashed; for "share" instead the
    mask's area, dotted: the share an even spread would give), with the high-noise expert's steps shaded."""
    if value not in ("rms", "norm", "share"):
        raise InspectError(f"value: expected 'rms', 'norm' or 'share', got {value!r}")
    fields = list(dict.fromkeys(table.field)) if fields is None else list(fields)
    objects = list(dict.fromkeys(table.id)) if objects is None else [str(i) for i in objects]
    if not fields or not objects:
        raise InspectError("the table has no rows to plot")
    fig, axes = plt.subplots(len(fields), len(objects), figsize=(size[0] * len(objects), size[1] * len(fields)),
                             squeeze=False, sharex=True)
    for r, field in enumerate(fields):
        for c, obj in enumerate(objects):
            ax = axes[r, c]
            t = table[(table.field == field) & (table.id == obj)]
            if t.empty:
                raise InspectError(f"no rows for field {field!r} and object {obj!r}")
            steps = t[t.region == "inside"].drop_duplicates("step")
            for step, expert in zip(steps.step, steps.expert):
                if expert == "high":
                    ax.axvspan(step - 0.5, step + 0.5, color="0.9", lw=0)
            regions = (("inside", "-o"),) if value == "share" else (("inside", "-o"), ("outside", "--"))
            for region, style in regions:
                g = t[t.region == region]
                ax.plot(g.step, g[value], style, ms=3, label=region)
            if value == "share":
                ax.plot(steps.step, steps.area, ":", color="0.4", label="mask area")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_title(f"{field}: object {obj}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{value} of the change")
            if r == len(fields) - 1:
                ax.set_xlabel("step (shaded: high-noise expert)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    return fig
