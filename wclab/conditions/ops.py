"""Programmatic trajectory edits for ablations: the drawing tool's operations plus time/space transforms.

Every function is pure: it returns a new :class:`Trajectory` / :class:`Scene` and leaves its inputs alone.
Positions are pixels ``(x, y)`` of the H×W start image; frames are indices ``0..T-1``. A trajectory is
*active* on the frames whose point is not the ``(-1, -1)`` placeholder; for one drawn with the tool (or with
:func:`polyline_track`) these form one range ``[st, et)``.

Operations that re-draw or re-time a track (:func:`resample_density`, :func:`entering`, :func:`leaving`,
:func:`time_shift`, :func:`time_stretch`) need that one range and raise for a track with ``(-1, -1)`` gaps.
Frames moved outside ``[0, T)`` by :func:`time_shift` / :func:`time_stretch` are dropped: they become
``(-1, -1)`` with visibility 0 (it is an error if no active frame is left). No operation may put an active
point exactly on ``(-1, -1)``: the file would read it back as "no point", so that raises too.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from wclab.conditions.rle import RLEMask
from wclab.conditions.scene import ANCHOR_TEXT, OFF, Scene, Trajectory
from wclab.errors import ConditionError

Point = Sequence[float]
ObjId = Union[int, str]

TOOL_COLOR = "red"
"""``color_map`` value the drawing tool writes for every captioned id (the reference does not read it)."""


# ----------------------------------------------------------------------------- the drawing tool
def polyline_track(polyline: Sequence[Point], st: int, et: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The drawing tool's trajectory for clicked points ``polyline`` over frames ``[st, et)`` of ``frames``.

    Returns ``track`` float64 ``[T, 2]`` (x, y) pixels and ``vis`` int64 ``[T]``: ``(-1, -1)`` / 0 outside
    ``[st, et)``, the resampled polyline / 1 inside. As in the tool (``interpolate_polyline``): the n = et - st
    frames are split between the K-1 segments in equal counts, not by length (segment i gets
    ``max(1, ceil(frames left / segments left))``, the last one the rest); a segment with c >= 2 frames is
    ``linspace(0, 1, c)`` between its float32-rounded ends (computed in float64), and every segment after the
    first drops its first sample (the joint); a segment with 1 frame contributes its start point; the track is
    padded with its last sample. So the last clicked point is reached only if the last segment gets >= 2
    frames. A single point gives a static track (not float32-rounded, as in the tool).

    The tool crashes when n < K - 2 (a segment gets a negative count); this raises :class:`ConditionError`
    instead. Unlike the tool, points are not clipped to the image (so objects can enter/leave) and an ``st``/
    ``et`` outside ``0 <= st < et <= frames`` raises instead of being clipped.
    """
    frames = _int(frames, "frames")
    st, et = _int(st, "st"), _int(et, "et")
    if frames < 1:
        raise ConditionError(f"frames: expected >= 1, got {frames}")
    if not 0 <= st < et <= frames:
        raise ConditionError(f"[st, et) = [{st}, {et}): expected 0 <= st < et <= frames = {frames}")
    pts = _points(polyline, "polyline")
    n, segments = et - st, len(pts) - 1
    if n < segments - 1:
        raise ConditionError(
            f"polyline has {segments} segments but [st, et) = [{st}, {et}) has only {n} frames; the drawing tool "
            f"needs at least {segments - 1} (it crashes otherwise): use fewer points or a longer [st, et)")
    if segments == 0:
        samples = np.repeat(pts[:1], n, axis=0)
    else:
        samples = _interpolate(pts.astype(np.float32), n)
    track = np.full((frames, 2), OFF, dtype=np.float64)
    vis = np.zeros(frames, dtype=np.int64)
    track[st:et] = samples
    vis[st:et] = 1
    return track, vis


def _segment_counts(n: int, segments: int) -> list[int]:
    counts, used = [], 0
    for i in range(segments - 1):
        c = max(1, (n - used + segments - i - 1) // (segments - i))
        counts.append(c)
        used += c
    return counts + [n - used]


def _interpolate(pts32: np.ndarray, n: int) -> np.ndarray:
    out: list[np.ndarray] = []
    for s, c in enumerate(_segment_counts(n, len(pts32) - 1)):
        a, b = pts32[s], pts32[s + 1]
        if c == 1:
            out.append(a.astype(np.float64)[None])
        elif c > 1:
            t = np.linspace(0, 1, c)[:, None]
            seg = (1 - t) * a + t * b  # float64: float32 ends promoted, as in the tool
            out.append(seg if s == 0 else seg[1:])
    samples = np.concatenate(out)[:n]
    if len(samples) < n:
        samples = np.concatenate([samples, np.repeat(samples[-1:], n - len(samples), axis=0)])
    return samples


def mask_radius(mask: Union[RLEMask, np.ndarray]) -> int:
    """The tool's ``r = max(mask_area * 320 // 399360, 5)`` pixels.

    399360 = 480 × 832 (the tool's image size); the formula is kept as the tool has it for every image size.
    """
    area = mask.area if isinstance(mask, RLEMask) else int(_binary(mask).sum())
    return int(max(area * 320 // 399360, 5))


def make_trajectory(polyline: Sequence[Point], st: int, et: int, *, obj_id: int, mask: Union[RLEMask, np.ndarray],
                    frames: int, text: str = ANCHOR_TEXT, r: Optional[float] = None) -> Trajectory:
    """What the tool saves for one object: :func:`polyline_track` points/visibility, ``r`` from the mask.

    mask: ``[H, W]`` bool/0-1 array or :class:`RLEMask`. text: the caption, or ``"None"`` for an anchor.
    Values have the tool's JSON types (float points, int visibility, int ``r``).
    """
    track, vis = polyline_track(polyline, st, et, frames)
    rle = _as_mask(mask)
    if r is None:
        r = mask_radius(rle)
    return Trajectory(points=_tuples(track, vis > 0, obj_id), visibility=tuple(int(v) for v in vis), r=_radius(r),
                      id=_obj_id(obj_id), mask=rle, text=_text(text))


def static_anchor(point: Point, *, obj_id: int, mask: Union[RLEMask, np.ndarray], frames: int,
                  text: str = ANCHOR_TEXT) -> Trajectory:
    """A point that stays put and is visible over all ``frames`` (a camera/background anchor by default)."""
    return make_trajectory([point], 0, frames, obj_id=obj_id, mask=mask, frames=frames, text=text)


def active_range(traj: Trajectory) -> tuple[int, int]:
    """``(st, et)``: the trajectory's active frames ``[st, et)``. Raises if it has none or they have gaps."""
    idx = np.flatnonzero(traj.active_frames())
    if len(idx) == 0:
        raise ConditionError(f"trajectory id {traj.id}: no active frames (every point is [-1, -1])")
    st, et = int(idx[0]), int(idx[-1]) + 1
    if len(idx) != et - st:
        gap = int(idx[np.flatnonzero(np.diff(idx) > 1)[0]]) + 1
        raise ConditionError(f"trajectory id {traj.id}: active frames [{st}, {et}) have a [-1, -1] gap at frame {gap}; "
                             "expected one contiguous range as the drawing tool makes")
    return st, et


def nearest_track_index(traj: Trajectory, point: Point) -> int:
    """The tool's ``find_nearest_track_index``: frame in the active range nearest to ``point`` (x, y) pixels.

    As in the tool, frames with a negative coordinate are skipped and ties go to the earliest frame.
    """
    x, y = _points([point], "point")[0]
    idx = np.flatnonzero(traj.active_frames())
    if len(idx) == 0:
        raise ConditionError(f"trajectory id {traj.id}: no active frames to pick from")
    frames = np.arange(idx[0], idx[-1] + 1)
    track = traj.track[frames]
    ok = (track[:, 0] >= 0) & (track[:, 1] >= 0)
    if not ok.any():
        raise ConditionError(f"trajectory id {traj.id}: no frame with non-negative coordinates to pick from")
    dx, dy = track[:, 0] - x, track[:, 1] - y
    d2 = np.where(ok, dx * dx + dy * dy, np.inf)
    return int(frames[int(np.argmin(d2))])


def erase(traj: Trajectory, f0: int, f1: int) -> Trajectory:
    """Frames ``f0..f1`` inclusive (either order) become invisible (visibility 0); points are kept."""
    lo, hi = _frame_span(traj, f0, f1)
    vis = list(traj.visibility)
    vis[lo:hi + 1] = [0] * (hi + 1 - lo)
    return traj.replace(visibility=tuple(vis))


def erase_between(traj: Trajectory, p_a: Point, p_b: Point) -> Trajectory:
    """The tool's erase: two clicks pick their nearest track frames; every frame between them (inclusive) is erased."""
    return erase(traj, nearest_track_index(traj, p_a), nearest_track_index(traj, p_b))


def restore(traj: Trajectory, f0: int, f1: int) -> Trajectory:
    """Undo :func:`erase`: frames ``f0..f1`` inclusive that have a point become visible (1); others stay 0."""
    lo, hi = _frame_span(traj, f0, f1)
    active = traj.active_frames()
    vis = [1 if lo <= f <= hi and active[f] else v for f, v in enumerate(traj.visibility)]
    return traj.replace(visibility=tuple(vis))


# ----------------------------------------------------------------------------- re-interpolation
def control_points(traj: Trajectory, *, tol: float = 1e-6) -> np.ndarray:
    """``float64 [K, 2]``: the corners of the active track (first point, every bend or change of speed, last point).

    For a tool-drawn track whose segments each got >= 2 frames this recovers the clicked polyline (minus
    repeated clicks). ``tol``: pixels (relative to the coordinate magnitude) below which a second difference
    counts as zero.
    """
    st, et = active_range(traj)
    p = traj.track[st:et]
    scale = tol * max(1.0, float(np.abs(p).max()))
    bend = np.abs(p[:-2] - 2 * p[1:-1] + p[2:]).max(axis=1) > scale if len(p) > 2 else np.zeros(0, bool)
    keep = np.concatenate([[True], bend, [True]])[: len(p)]
    knots = p[keep]
    distinct = np.concatenate([[True], np.abs(np.diff(knots, axis=0)).max(axis=1) > scale])
    return knots[distinct]


def resample_density(traj: Trajectory, *, keep_every: Optional[int] = None,
                     n_points: Optional[int] = None) -> Trajectory:
    """Re-draw the track through fewer of its own points, over the same ``[st, et)`` (:func:`polyline_track`).

    keep_every=k: active-frame points 0, k, 2k, ... and always the last one. n_points=N: N points at evenly
    spaced frames (rounded; N <= active frames). Exactly one must be given. Visibility is kept per frame.
    Note keep_every=1 is not the identity: the tool's joint handling repeats points when segments get 1 frame.
    """
    if (keep_every is None) == (n_points is None):
        raise ConditionError("resample_density: expected exactly one of keep_every, n_points")
    st, et = active_range(traj)
    n = et - st
    if keep_every is not None:
        k = _int(keep_every, "keep_every")
        if k < 1:
            raise ConditionError(f"keep_every: expected >= 1, got {k}")
        idx = list(range(0, n, k))
        if idx[-1] != n - 1:
            idx.append(n - 1)
    else:
        m = _int(n_points, "n_points")
        if not 1 <= m <= n:
            raise ConditionError(f"n_points: expected 1..{n} (the active frames of trajectory id {traj.id}), got {m}")
        idx = sorted({int(round(v)) for v in np.linspace(0, n - 1, m)})
    return _redraw(traj, traj.track[st:et][idx], st, et)


def entering(traj: Trajectory, from_point: Point) -> Trajectory:
    """The object starts off-image at ``from_point`` and then follows its path, within the same ``[st, et)``.

    The path is :func:`control_points` with ``from_point`` prepended, re-drawn by :func:`polyline_track`
    (frames split equally between segments); visibility is kept per frame. ``from_point`` must lie outside
    the H×W image, so frame ``st`` is off-image and the prompt says ``Object k appears``.
    """
    start = _off_image_point(traj, from_point, "from_point")
    st, et = active_range(traj)
    return _redraw(traj, np.concatenate([start[None], control_points(traj)]), st, et)


def leaving(traj: Trajectory, to_point: Point) -> Trajectory:
    """The object follows its path and then leaves the image to ``to_point`` (off-image), within ``[st, et)``.

    Like :func:`entering` with the off-image point appended.
    """
    end = _off_image_point(traj, to_point, "to_point")
    st, et = active_range(traj)
    return _redraw(traj, np.concatenate([control_points(traj), end[None]]), st, et)


def _redraw(traj: Trajectory, polyline: np.ndarray, st: int, et: int) -> Trajectory:
    track, vis = polyline_track(polyline, st, et, traj.frames)
    return traj.replace(points=_tuples(track, vis > 0, traj.id))


# ----------------------------------------------------------------------------- time and space transforms
def time_shift(traj: Trajectory, dt: int) -> Trajectory:
    """Move the whole track ``dt`` frames later (earlier if negative); frames pushed outside ``[0, T)`` are dropped."""
    dt = _int(dt, "dt")
    T = traj.frames
    src = np.arange(T) - dt
    return _retime(traj, src, f"time_shift(dt={dt})")


def time_stretch(traj: Trajectory, factor: float, anchor_frame: Optional[float] = None) -> Trajectory:
    """Play the track ``factor`` times slower (>1) or faster (<1) around ``anchor_frame`` (default: its ``st``).

    New frame g shows the old track at time ``a + (g - a) / factor``, linearly interpolated between frames;
    visibility is that of the nearest old frame. Only times inside the old active range are kept; frames
    pushed outside ``[0, T)`` are dropped.
    """
    factor = _number(factor, "factor")
    if factor <= 0:
        raise ConditionError(f"factor: expected > 0, got {factor}")
    st, et = active_range(traj)
    a = st if anchor_frame is None else _number(anchor_frame, "anchor_frame")
    s = a + (np.arange(traj.frames) - a) / factor
    s = np.where(np.abs(s - np.round(s)) < 1e-9, np.round(s), s)  # exact frames stay exact
    return _retime(traj, s, f"time_stretch(factor={factor}, anchor_frame={a})")


def _retime(traj: Trajectory, src: np.ndarray, what: str) -> Trajectory:
    """New frame g takes the old track at (fractional) time ``src[g]`` if that lies within the old active range."""
    st, et = active_range(traj)
    old = traj.track
    keep = (src >= st) & (src <= et - 1)
    if not keep.any():
        raise ConditionError(f"trajectory id {traj.id}: {what} moves every active frame [{st}, {et}) outside "
                             f"[0, {traj.frames})")
    track = np.full((traj.frames, 2), OFF, dtype=np.float64)
    s = src[keep]
    i0 = np.floor(s).astype(int)
    i1 = np.minimum(i0 + 1, et - 1)
    w = (s - i0)[:, None]
    track[keep] = (1 - w) * old[i0] + w * old[i1]  # exact at whole frames (w = 0)
    nearest = np.floor(s + 0.5).astype(int)
    vis = [0] * traj.frames
    for g, f in zip(np.flatnonzero(keep), nearest):
        vis[g] = traj.visibility[f]
    return traj.replace(points=_tuples(track, keep, traj.id), visibility=tuple(vis))


def jitter(traj: Trajectory, sigma_px: float, seed: int) -> Trajectory:
    """Add independent Gaussian noise (std ``sigma_px`` pixels, ``numpy.random.default_rng(seed)``) to active points.

    Points may land off-image (a negative coordinate there is treated like the tool treats it).
    """
    sigma = _number(sigma_px, "sigma_px")
    if sigma < 0:
        raise ConditionError(f"sigma_px: expected >= 0, got {sigma}")
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=(traj.frames, 2))
    return _move(traj, lambda p, act: p + noise[act])


def scale(traj: Trajectory, factor: Union[float, Point], center: Point) -> Trajectory:
    """Scale active points about ``center`` (x, y) pixels by ``factor`` (one number, or ``(fx, fy)``)."""
    f = np.atleast_1d(np.asarray(factor, dtype=object))
    if f.shape not in ((1,), (2,)):
        raise ConditionError(f"factor: expected a number or (fx, fy), got {factor!r:.60}")
    f = np.array([_number(v, "factor") for v in f] * (3 - len(f)))[:2]
    c = _points([center], "center")[0]
    return _move(traj, lambda p, act: c + (p - c) * f)


def translate(traj: Trajectory, dx: float, dy: float) -> Trajectory:
    """Move active points by ``(dx, dy)`` pixels."""
    d = np.array([_number(dx, "dx"), _number(dy, "dy")])
    return _move(traj, lambda p, act: p + d)


def _move(traj: Trajectory, fn) -> Trajectory:
    act = traj.active_frames()
    track = np.array(traj.track)
    track[act] = fn(track[act], act)
    if not np.isfinite(track).all():
        raise ConditionError(f"trajectory id {traj.id}: the transform produced non-finite coordinates")
    return traj.replace(points=_tuples(track, act, traj.id))


# ----------------------------------------------------------------------------- scenes
def new_scene(height: int, width: int, frames: int) -> Scene:
    """An empty scene of H×W pixels and T frames to add trajectories to.

    It has no trajectories, so it cannot be saved (``to_json`` raises "empty scene") or encoded until
    trajectories are added; the loader likewise rejects files without trajectories.
    """
    h, w, t = _int(height, "height"), _int(width, "width"), _int(frames, "frames")
    if min(h, w, t) < 1:
        raise ConditionError(f"new_scene: expected positive height, width, frames, got {h}, {w}, {t}")
    return Scene(trajectories=(), captions={}, height=h, width=w, frames=t)


def add_trajectory(scene: Scene, traj: Trajectory, caption: Optional[str] = None) -> Scene:
    """Append ``traj``; its caption goes into ``id_caption_map`` (and ``color_map``) as the tool does.

    caption: sets the trajectory's text and its id's caption. Without it, a captioned trajectory (text not
    ``"None"``) adds its text as its id's caption. An id's existing caption is never overwritten (use
    :func:`set_caption`): a different one raises, as does adding an anchor under a captioned id.
    """
    if traj.frames != scene.frames:
        raise ConditionError(f"trajectory id {traj.id}: expected {scene.frames} frames (the scene's), "
                             f"got {traj.frames}")
    if tuple(traj.mask.size) != (scene.height, scene.width):
        raise ConditionError(f"trajectory id {traj.id}: mask size {list(traj.mask.size)}, expected the scene's "
                             f"[{scene.height}, {scene.width}]")
    if caption is not None:
        traj = traj.replace(text=_caption(caption))
    key = str(traj.id)
    captions, color_map = dict(scene.captions), dict(scene.color_map)
    if traj.is_anchor:
        if key in captions:
            raise ConditionError(f"trajectory id {traj.id}: text 'None' marks an anchor, but id {key} has caption "
                                 f"{captions[key]!r}; give the anchor an id of its own")
    elif key in captions and captions[key] != traj.text:
        raise ConditionError(f"trajectory id {traj.id}: id {key} already has caption {captions[key]!r}, got "
                             f"{traj.text!r}; use set_caption to change it")
    else:
        captions[key] = traj.text
        color_map.setdefault(key, TOOL_COLOR)
    return scene.replace(trajectories=scene.trajectories + (traj,), captions=captions, color_map=color_map)


def remove_object(scene: Scene, obj_id: ObjId) -> Scene:
    """Drop every trajectory of ``obj_id`` and its caption/colour. The result may be empty (see :func:`new_scene`)."""
    key = str(obj_id)
    if not scene.trajectories_of(key) and key not in scene.captions:
        raise ConditionError(f"remove_object: no object with id {key} (ids: {_ids(scene)})")
    return scene.replace(
        trajectories=[t for t in scene.trajectories if str(t.id) != key],
        captions={k: v for k, v in scene.captions.items() if k != key},
        color_map={k: v for k, v in scene.color_map.items() if k != key})


def set_caption(scene: Scene, obj_id: ObjId, caption: str) -> Scene:
    """Give object ``obj_id`` the caption (kept in its prompt position, or appended) and its trajectories that text."""
    key, caption = str(obj_id), _caption(caption)
    if not scene.trajectories_of(key):
        raise ConditionError(f"set_caption: no trajectory has id {key} (ids: {_ids(scene)})")
    captions, color_map = dict(scene.captions), dict(scene.color_map)
    captions[key] = caption
    color_map.setdefault(key, TOOL_COLOR)
    trajs = [t.replace(text=caption) if str(t.id) == key else t for t in scene.trajectories]
    return scene.replace(trajectories=trajs, captions=captions, color_map=color_map)


# ----------------------------------------------------------------------------- argument checks
def _ids(scene: Scene) -> list[str]:
    return sorted({str(t.id) for t in scene.trajectories}, key=lambda k: (len(k), k))


def _int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ConditionError(f"{name}: expected an integer, got {type(v).__name__} {v!r:.40}")
    return int(v)


def _number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ConditionError(f"{name}: expected a finite number, got {type(v).__name__} {v!r:.40}")
    return float(v)


def _points(points, name: str) -> np.ndarray:
    try:
        a = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConditionError(f"{name}: expected (x, y) pairs of numbers ({e})") from None
    if a.ndim != 2 or a.shape[1] != 2 or len(a) == 0:
        raise ConditionError(f"{name}: expected a non-empty sequence of (x, y) pairs, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ConditionError(f"{name}: expected finite coordinates, got {a[~np.isfinite(a).all(1)][0].tolist()}")
    return a


def _off_image_point(traj: Trajectory, point: Point, name: str) -> np.ndarray:
    p = _points([point], name)[0]
    h, w = traj.mask.size
    if 0 <= p[0] < w and 0 <= p[1] < h:
        raise ConditionError(f"{name}: expected a point outside the {h}x{w} image, got ({p[0]}, {p[1]})")
    return p


def _frame_span(traj: Trajectory, f0: int, f1: int) -> tuple[int, int]:
    f0, f1 = _int(f0, "f0"), _int(f1, "f1")
    for name, f in (("f0", f0), ("f1", f1)):
        if not 0 <= f < traj.frames:
            raise ConditionError(f"{name}: expected a frame in [0, {traj.frames}), got {f}")
    return min(f0, f1), max(f0, f1)


def _binary(mask) -> np.ndarray:
    a = np.asarray(mask)
    if a.ndim != 2 or (a.dtype != bool and not np.isin(a, (0, 1)).all()):
        raise ConditionError(f"mask: expected a binary [H, W] array (bool or 0/1), got {a.dtype} shape {a.shape}")
    return a.astype(bool)


def _as_mask(mask) -> RLEMask:
    return mask if isinstance(mask, RLEMask) else RLEMask.from_array(_binary(mask))


def _obj_id(v) -> int:
    return _int(v, "obj_id")


def _radius(r) -> Union[int, float]:
    r = int(r) if isinstance(r, (int, np.integer)) and not isinstance(r, bool) else _number(r, "r")
    if r < 0:
        raise ConditionError(f"r: expected a radius >= 0 pixels, got {r}")
    return r


def _text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ConditionError(f"text: expected a caption or 'None' for an anchor, got {text!r:.60}")
    return text


def _caption(caption) -> str:
    if _text(caption) == ANCHOR_TEXT:
        raise ConditionError("caption: expected a caption, got 'None' (which marks an anchor)")
    return caption


def _tuples(track: np.ndarray, active: np.ndarray, obj_id) -> tuple[tuple[float, float], ...]:
    """Points for a Trajectory; an active point exactly at the ``(-1, -1)`` placeholder would read back as no point."""
    clash = np.flatnonzero(active & np.all(track == -1, axis=1))
    if len(clash):
        raise ConditionError(f"trajectory id {obj_id}: frame {int(clash[0])}: the point (-1, -1) is the file format's "
                             "'no point' placeholder and would read back as inactive; move the path off it")
    return tuple((float(x), float(y)) for x, y in track)
