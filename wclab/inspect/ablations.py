"""Ablations: variants of a base scene (trajectory density, visibility, anchors, β, captions) or of how it is
sampled (step-distilled schedule, step caches) generated with the same start noise, compared in one table and one
grid video.

>>> variants = [base_variant(scene), *beta_variants(scene, (1.0,)), *density_variants(scene, (4,))]
>>> result = run_ablations(Session(models, scene, image, Settings(steps=50, seed=0)), variants)
>>> result.table                      # one row per variant: errors, attention overlap, pixel difference
>>> show_video(result.grid)
>>> modes = sampling_variants(scene, distilled=True, caches={"cache": fast.FixedCache(2)})
>>> run_ablations(session, modes, timing=True).table   # mean_lag / lag_vs_first: objects arriving late?

Variant builders apply :mod:`wclab.conditions.ops` edits to the trajectories of the chosen captioned objects
(default: all captioned objects) and return new scenes; the base scene is never changed.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from wclab.conditions import Scene, ops
from wclab.conditions.scene import ANCHOR_TEXT
from wclab.encode.bias import BETA
from wclab.inspect.attention import AttentionMaps, InspectError
from wclab.inspect.display import video_grid
from wclab.inspect.metrics import (pairwise_pixel_difference, pixel_difference, timing_comparison,
                                   trajectory_following_error)
from wclab.models import fast
from wclab.sampler import UPDATABLE_SETTINGS, Session, Settings

ObjId = Union[int, str]


@dataclass(frozen=True)
class Variant:
    """One generation of an ablation: a scene plus settings changes (e.g. ``{"beta": 1.0}``); ``around``, if
    given, is called with the variant's session and the context manager it returns is held while that session
    runs (e.g. a step cache on the experts: ``lambda s: fast.step_caches(s.models, fast.EasyCache())``)."""

    name: str
    scene: Scene
    settings: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "base"
    description: str = ""
    around: Optional[Callable[[Session], ContextManager]] = None


def _ids(scene: Scene, objects: Optional[Iterable[ObjId]]) -> list[str]:
    ids = list(scene.captions) if objects is None else [str(i) for i in objects]
    unknown = [i for i in ids if i not in scene.captions]
    if unknown or not ids:
        raise InspectError(f"objects: expected captioned ids among {list(scene.captions)}, got {ids}")
    return ids


def _edit(scene: Scene, ids: Sequence[str], fn) -> Scene:
    return scene.replace(trajectories=[fn(t) if str(t.id) in ids else t for t in scene.trajectories])


def base_variant(scene: Scene) -> Variant:
    return Variant("base", scene, {}, "base", "the scene as drawn")


def density_variants(scene: Scene, keep_every: Sequence[int] = (2, 4, 8),
                     objects: Optional[Iterable[ObjId]] = None) -> list[Variant]:
    """Fewer control points: each chosen object's path re-drawn through every k-th of its points
    (:func:`wclab.conditions.ops.resample_density`)."""
    ids = _ids(scene, objects)
    return [Variant(f"every_{k}", _edit(scene, ids, lambda t, k=k: ops.resample_density(t, keep_every=k)), {},
                    "density", f"objects {ids}: path through every {k}th point") for k in keep_every]


def visibility_variants(scene: Scene, objects: Optional[Iterable[ObjId]] = None,
                        erased: tuple[float, float] = (1 / 3, 2 / 3), hidden_start: float = 0.5) -> list[Variant]:
    """"erased": the chosen objects are invisible over the ``erased`` fraction of their active frames (the
    drawing tool's erase); "invisible_from_start": invisible over the first ``hidden_start`` of them."""
    ids = _ids(scene, objects)

    def erase(t, a: float, b: float):
        st, et = ops.active_range(t)
        n = et - st
        return ops.erase(t, st + int(a * (n - 1)), st + int(b * (n - 1)))

    return [Variant("erased", _edit(scene, ids, lambda t: erase(t, *erased)), {}, "visibility",
                    f"objects {ids}: invisible over {erased[0]:.2f}..{erased[1]:.2f} of their frames"),
            Variant("invisible_from_start", _edit(scene, ids, lambda t: erase(t, 0.0, hidden_start)), {},
                    "visibility", f"objects {ids}: invisible over the first {hidden_start:.2f} of their frames")]


ANCHOR_SPOTS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75), (0.5, 0.15), (0.5, 0.85), (0.15, 0.5),
                (0.85, 0.5))  # (x, y) fractions of the image where added anchors go


def anchor_variants(scene: Scene, counts: Sequence[int] = (0, 2, 4), mask_half_size: int = 4) -> list[Variant]:
    """Anchor count n: the scene's first n anchors, plus static anchors at :data:`ANCHOR_SPOTS` (each with a
    square mask of ``2·mask_half_size+1`` px) when n exceeds the scene's anchors."""
    anchors = [t for t in scene.trajectories if t.is_anchor]
    out = []
    for n in counts:
        if not 0 <= n <= len(anchors) + len(ANCHOR_SPOTS):
            raise InspectError(f"counts: expected 0..{len(anchors) + len(ANCHOR_SPOTS)} anchors, got {n}")
        kept = set(map(id, anchors[:n]))
        s = scene.replace(trajectories=[t for t in scene.trajectories if not t.is_anchor or id(t) in kept])
        next_id = max((t.id for t in scene.trajectories), default=0) + 1
        for j, (fx, fy) in enumerate(ANCHOR_SPOTS[: max(n - len(anchors), 0)]):
            x, y = int(fx * (scene.width - 1)), int(fy * (scene.height - 1))
            mask = np.zeros((scene.height, scene.width), bool)
            mask[max(y - mask_half_size, 0): y + mask_half_size + 1, max(x - mask_half_size, 0): x + mask_half_size + 1] = True
            s = ops.add_trajectory(s, ops.static_anchor((float(x), float(y)), obj_id=next_id + j, mask=mask,
                                                        frames=scene.frames))
        out.append(Variant(f"anchors_{n}", s, {}, "anchors", f"{n} anchors (scene has {len(anchors)})"))
    return out


def beta_variants(scene: Scene, betas: Sequence[float] = (1.0, 10.0, BETA)) -> list[Variant]:
    """Cross-attention bias strength β (1 = no bias)."""
    return [Variant(f"beta_{b:g}", scene, {"beta": float(b)}, "beta", f"β = {b:g}") for b in betas]


def uncaption(scene: Scene, obj_id: ObjId) -> Scene:
    """The scene without object ``obj_id``'s caption: its trajectories stay, as anchors (text ``"None"``)."""
    key = str(obj_id)
    if key not in scene.captions:
        raise InspectError(f"uncaption: id {key} has no caption (captioned: {list(scene.captions)})")
    if len(scene.captions) == 1:
        raise InspectError(f"uncaption: id {key} holds the only caption; the prompt needs at least one")
    return scene.replace(
        trajectories=[t.replace(text=ANCHOR_TEXT) if str(t.id) == key else t for t in scene.trajectories],
        captions={k: v for k, v in scene.captions.items() if k != key},
        color_map={k: v for k, v in scene.color_map.items() if k != key})


def caption_variants(scene: Scene, objects: Optional[Iterable[ObjId]] = None) -> list[Variant]:
    """One variant per chosen object with its caption removed (see :func:`uncaption`)."""
    return [Variant(f"no_caption_{i}", uncaption(scene, i), {}, "caption", f"object {i} without its caption")
            for i in _ids(scene, objects)]


def sampling_variants(scene: Scene, distilled: bool = True, caches: Optional[Mapping[str, fast.CachePolicy]] = None
                      ) -> list[Variant]:
    """The scene sampled several ways, for timing comparisons: "exact" (the session's own settings, every
    forward computed), "distilled" (:meth:`Settings.step_distilled`: 4 steps, CFG 1; load the distillation LoRA
    into the models for the real thing) and one variant per ``caches`` entry (name → `fast.FixedCache` /
    `fast.FirstBlockCache` / `fast.EasyCache` on both experts, the session's settings otherwise)."""
    preset = Settings.step_distilled()
    out = [Variant("exact", scene, {}, "sampling", "every forward computed")]
    if distilled:
        changes = {k: getattr(preset, k) for k in ("steps", "shift", "cfg", "step_list")}
        out.append(Variant("distilled", scene, changes, "sampling",
                           f"{preset.steps} steps at timesteps {list(preset.step_list)}, CFG {preset.cfg:g}"))
    for name, policy in (caches or {}).items():
        if not isinstance(policy, fast.POLICIES):
            raise InspectError(f"caches[{name!r}]: expected a fast.FixedCache / FirstBlockCache / EasyCache, got "
                               f"{type(policy).__name__}")
        out.append(Variant(name, scene, {}, "sampling", repr(policy),
                           around=lambda s, policy=policy: fast.step_caches(s.models, policy)))
    return out


# ------------------------------------------------------------------------------------------------ running
@dataclass
class AblationResult:
    """table: one row per variant (see :func:`run_ablations`); videos: name → uint8 ``[N, H, W, 3]``; grid:
    the videos side by side; tracking: per variant and trajectory (:func:`trajectory_following_error`);
    attention: per variant and object (fraction of attention mass in the token mask, and the mask's area);
    timing: with ``timing=True``, per variant, trajectory and frame (:func:`timing_comparison` against the first
    variant: columns variant, trajectory, id, anchor, frame, drawn_frame, lag, lag_vs_reference, in frames);
    sessions: the finished sessions when asked to keep them."""

    table: pd.DataFrame
    videos: dict[str, np.ndarray]
    grid: np.ndarray
    tracking: pd.DataFrame
    attention: pd.DataFrame
    sessions: dict[str, Any] = field(default_factory=dict, repr=False)
    timing: pd.DataFrame = field(default_factory=pd.DataFrame)

    def pixel_differences(self) -> pd.DataFrame:
        """Mean |Δ| (0..255 levels) between every pair of variant videos."""
        return pairwise_pixel_difference(self.videos)


def _variant_session(base, v: Variant, record: Optional[str]):
    changes = {**({"record": record} if record else {}), **v.settings}
    fixed = set(changes) - UPDATABLE_SETTINGS
    if fixed:  # steps, seed, shift...: a session of its own
        settings = base.settings.replace(**changes)
        return Session(base.models, v.scene, base.image, settings, progress=False)
    s = base.branch()
    s.progress = False
    if v.scene is not base.scene:
        s.set_scene(v.scene)
    s.update(**changes)
    return s


def run_ablations(session, variants: Sequence[Variant], decode: Literal["vae", "preview"] = "vae",
                  attention: Optional[Mapping[str, Any]] = None, tracking: bool = True,
                  keep_sessions: bool = False, columns: Optional[int] = None, progress: bool = True,
                  timing: bool = False) -> AblationResult:
    """Generate every variant from ``session`` (a prepared, not yet stepped :class:`wclab.sampler.Session`)
    and compare them.

    Variants branch off ``session``, so they share its start image encoding and start noise (same seed);
    settings changes that cannot be applied mid-run (e.g. ``steps``) get a fresh session with the same seed.
    decode: "vae" (exact, ``[T, H, W, 3]``) or "preview" (latent→RGB projection, ``[F', H, W, 3]``, fast).
    attention: keyword arguments for :class:`AttentionMaps` (e.g. ``{"blocks": range(20)}``); None: defaults.
    Table columns: variant, kind, description, settings, follow_error / anchor_error (mean tracking error in
    pixels of captioned / anchor trajectories), lost (fraction of visible frames where the tracker lost the
    point), attention_in_mask / mask_area (mean over objects), pixel_diff (mean |Δ| in 0..255 levels vs the
    first variant), seconds; with ``timing``: mean_lag (frames the captioned objects are behind their drawn
    schedule, mean over trajectories and frames) and lag_vs_first (frames behind the first variant's objects on
    the same frames; e.g. > 0 for a distilled run whose objects arrive late), per frame in ``result.timing``.
    A variant's ``around`` (e.g. a step cache) is held while it runs.
    """
    if session.step_index != 0:
        raise InspectError(f"run_ablations needs a session that has not stepped yet (it is at step "
                           f"{session.step_index}); create a new Session")
    if decode not in ("vae", "preview"):
        raise InspectError(f"decode: expected 'vae' or 'preview', got {decode!r}")
    if not variants:
        raise InspectError("variants: expected at least one Variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise InspectError(f"variants: names must be unique, got {names}")
    rows, videos, tracks, attn, sessions = [], {}, [], [], {}
    for v in tqdm(variants, desc="ablations", disable=not progress):
        start = time.perf_counter()
        s = _variant_session(session, v, None if keep_sessions else "none")
        with (v.around(s) if v.around else nullcontext()), AttentionMaps(s, **dict(attention or {})) as maps:
            s.run()
        videos[v.name] = s.decode() if decode == "vae" else s.preview(s.latents)
        overlap, area = maps.overlap_with_token_masks(), maps.mask_area_fraction()
        attn += [dict(variant=v.name, id=i, in_mask=overlap[i], mask_area=area[i]) for i in overlap]
        row = dict(variant=v.name, kind=v.kind, description=v.description, settings=dict(v.settings),
                   attention_in_mask=float(np.mean(list(overlap.values()))),
                   mask_area=float(np.mean(list(area.values()))))
        if tracking:
            t = trajectory_following_error(videos[v.name], v.scene).assign(variant=v.name)
            tracks.append(t)
            row.update(follow_error=t[~t.anchor].mean_error.mean(), anchor_error=t[t.anchor].mean_error.mean(),
                       lost=t.lost.mean())
        row.update(pixel_diff=pixel_difference(videos[v.name], videos[names[0]]),
                   seconds=time.perf_counter() - start)
        rows.append(row)
        if keep_sessions:
            sessions[v.name] = s
    table = pd.DataFrame(rows)
    per_frame = pd.DataFrame()
    if timing:
        per_frame = timing_comparison(videos, {v.name: v.scene for v in variants}).rename(columns={"run": "variant"})
        captioned = per_frame[~per_frame.anchor.astype(bool)].groupby("variant", sort=False)
        table["mean_lag"] = table.variant.map(captioned.lag.mean())
        table["lag_vs_first"] = table.variant.map(captioned.lag_vs_reference.mean())
    return AblationResult(table=table, videos=videos, grid=video_grid(videos, columns=columns),
                          tracking=pd.concat(tracks, ignore_index=True) if tracks else pd.DataFrame(),
                          attention=pd.DataFrame(attn), sessions=sessions, timing=per_frame)
