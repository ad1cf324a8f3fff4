"""Motion tools beyond the drawing tool: timing, speed curves, smooth paths, camera anchors and event presets.

The drawing tool's rule (:func:`wclab.conditions.polyline_track`: equal frames per segment) stays the default;
these functions build other tracks in the same form, ``track`` float64 ``[T, 2]`` (x, y) pixels with
``(-1, -1)`` outside the active frames and ``vis`` int64 ``[T]`` (1 visible, 0 not), or return new
:class:`Trajectory` objects, so every scene made with them writes exactly the drawing tool's JSON.
Frames are 0-based indices into the T frames; ``[st, et)`` is a half-open range as in ``polyline_track``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import numpy as np

from wclab.conditions.ops import (_as_mask, _int, _number, _points, _segment_counts, _tuples, active_range,
                                  erase, make_trajectory)
from wclab.conditions.rle import RLEMask
from wclab.conditions.scene import ANCHOR_TEXT, OFF, Trajectory
from wclab.errors import ConditionError

Point = Sequence[float]
Curve = Union[str, Callable[[float], float]]

# ----------------------------------------------------------------------------- timing
SPEED_CURVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda t: t,
    "ease_in": lambda t: t * t,
    "ease_out": lambda t: 1 - (1 - t) * (1 - t),
    "ease_in_out": lambda t: t * t * (3 - 2 * t),
}
"""Named progress curves ``progress(t)`` on ``[0, 1]``: linear (keep the timing), ease in (start slow, quadratic),
ease out (end slow, quadratic), ease in-out (smoothstep ``3t² - 2t³``)."""


def default_frames_at(n_points: int, st: int, et: int) -> list[int]:
    """The frames at which the drawing tool's equal-frames rule reaches each of ``n_points`` clicked points.

    ``timed_track(points, default_frames_at(K, st, et), T, et=et)`` equals ``polyline_track(points, st, et, T)``
    bit for bit. The tool reaches its last point at ``et - (K - 1)`` and holds it for the remaining ``K - 2``
    frames (its joints are dropped samples). Raises when ``et - st < 2 (K - 1)``: then some segment gets a single
    frame and the tool never reaches every point.
    """
    k, st, et = _int(n_points, "n_points"), _int(st, "st"), _int(et, "et")
    if k < 1:
        raise ConditionError(f"n_points: expected >= 1, got {k}")
    if not 0 <= st < et:
        raise ConditionError(f"[st, et) = [{st}, {et}): expected 0 <= st < et")
    n, segments = et - st, k - 1
    if n < 2 * segments:
        raise ConditionError(f"[st, et) = [{st}, {et}) has {n} frames; the drawing tool reaches all {k} points only "
                             f"with >= {2 * segments} frames (2 per segment)")
    frames, f = [st], st
    for c in (_segment_counts(n, segments) if segments else []):
        f += c - 1
        frames.append(f)
    return frames


def timed_track(points: Sequence[Point], frames_at: Sequence[int], frames: int, *,
                et: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """A track that reaches point i exactly at frame ``frames_at[i]``, moving linearly in between.

    frames_at: strictly increasing frame indices, one per point; ``frames_at[0]`` is ``st``. et: end of the
    active range (exclusive), default ``frames_at[-1] + 1``; the last point is held from ``frames_at[-1]`` to
    ``et - 1``. Returns ``track`` float64 ``[T, 2]`` and ``vis`` int64 ``[T]``, ``(-1, -1)`` / 0 outside
    ``[st, et)``. As in the tool, segment ends are rounded to float32 and interpolated in float64 (a single point
    is not rounded), so :func:`default_frames_at` reproduces ``polyline_track`` exactly.
    """
    T = _int(frames, "frames")
    pts = _points(points, "points")
    fa = [_int(f, f"frames_at[{i}]") for i, f in enumerate(frames_at)] if not isinstance(frames_at, (str, bytes)) \
        else None
    if fa is None or len(fa) != len(pts):
        raise ConditionError(f"frames_at: expected {len(pts)} frame indices (one per point), got {frames_at!r:.60}")
    if any(b <= a for a, b in zip(fa, fa[1:])):
        raise ConditionError(f"frames_at: expected strictly increasing frames, got {fa}")
    st = fa[0]
    et = fa[-1] + 1 if et is None else _int(et, "et")
    if not 0 <= st or not fa[-1] < et <= T:
        raise ConditionError(f"frames_at {fa} with et = {et}: expected 0 <= frames_at[0] and "
                             f"frames_at[-1] < et <= frames = {T}")
    track = np.full((T, 2), OFF, dtype=np.float64)
    vis = np.zeros(T, dtype=np.int64)
    if len(pts) == 1:
        track[st:et] = pts[0]
    else:
        p32 = pts.astype(np.float32)
        for i in range(len(pts) - 1):
            c = fa[i + 1] - fa[i] + 1
            t = np.linspace(0, 1, c)[:, None]
            track[fa[i]:fa[i + 1] + 1] = (1 - t) * p32[i] + t * p32[i + 1]
        track[fa[-1]:et] = track[fa[-1]]
    vis[st:et] = 1
    return track, vis


def eased(track: np.ndarray, vis: np.ndarray, curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """Re-time the active part of a track along its own path with a speed curve.

    track: ``[T, 2]`` (x, y) pixels, ``(-1, -1)`` outside one active range ``[st, et)``; vis: ``[T]``.
    curve: a name in :data:`SPEED_CURVES` or a callable ``progress(t)`` mapping ``[0, 1]`` onto ``[0, 1]``,
    non-decreasing, ``progress(0) = 0`` and ``progress(1) = 1``. Frame ``st + t (n - 1)`` then shows the old
    track at time ``st + progress(t) (n - 1)``, interpolated linearly between frames, so the path and its two
    ends stay and ``"linear"`` changes nothing. Visibility moves with the path (that of the nearest old frame).
    Returns new ``track`` float64 ``[T, 2]`` and ``vis`` (the input's dtype).
    """
    tr = _points(track, "track")  # [T, 2] float64
    v = np.asarray(vis)
    if v.shape != (len(tr),):
        raise ConditionError(f"vis: expected shape ({len(tr)},) to match track, got {v.shape}")
    st, et = _active(tr)
    n = et - st
    if n < 2:
        return tr.copy(), v.copy()
    t = np.linspace(0.0, 1.0, n)
    s = _progress(curve, t) * (n - 1)
    i0 = np.minimum(np.floor(s).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (s - i0)[:, None]
    old = tr[st:et]
    out, out_vis = tr.copy(), v.copy()
    out[st:et] = np.where(w == 0, old[i0], (1 - w) * old[i0] + w * old[i1])
    out_vis[st:et] = v[st:et][np.floor(s + 0.5).astype(int)]
    return out, out_vis


def _progress(curve: Curve, t: np.ndarray) -> np.ndarray:
    if isinstance(curve, str):
        if curve not in SPEED_CURVES:
            raise ConditionError(f"curve: expected one of {sorted(SPEED_CURVES)} or a callable, got {curve!r}")
        fn = SPEED_CURVES[curve]
    elif callable(curve):
        fn = curve
    else:
        raise ConditionError(f"curve: expected a name in {sorted(SPEED_CURVES)} or a callable, got {curve!r:.60}")
    probe = np.linspace(0.0, 1.0, 257)
    try:
        p = np.array([float(fn(x)) for x in np.concatenate([t, probe])])
    except (TypeError, ValueError) as e:
        raise ConditionError(f"curve: progress(t) must return a number ({e})") from None
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ConditionError("curve: progress(t) must stay within [0, 1] for t in [0, 1]")
    if abs(p[0]) > 1e-9 or abs(p[len(t) - 1] - 1) > 1e-9:
        raise ConditionError(f"curve: expected progress(0) = 0 and progress(1) = 1, got {p[0]} and {p[len(t) - 1]}")
    q = p[len(t):]
    if (np.diff(q) < -1e-12).any() or (np.diff(p[:len(t)]) < -1e-12).any():
        raise ConditionError("curve: progress(t) must be non-decreasing (an object cannot go back on its own timing)")
    out = p[:len(t)].copy()
    out[0], out[-1] = 0.0, 1.0
    return np.maximum.accumulate(out)


# ----------------------------------------------------------------------------- smooth paths
def spline_path(points: Sequence[Point], tension: float = 0.5, samples_per_segment: int = 16) -> np.ndarray:
    """A Catmull-Rom (cardinal) spline through ``points``: ``float64 [M, 2]`` (x, y) pixels, ``M = (K-1)·s + 1``.

    Each segment is a cubic Hermite curve between two points with tangents ``tension · (p[i+1] - p[i-1])`` (the
    ends use the reflected neighbour); ``tension = 0.5`` is the standard Catmull-Rom spline, 0 gives the straight
    polyline, larger values round the corners more (as the tension slider of KJNodes' spline editor). Every point
    is on the path exactly, at sample ``i·s``.
    """
    pts = _points(points, "points")
    tension = _number(tension, "tension")
    if tension < 0:
        raise ConditionError(f"tension: expected >= 0, got {tension}")
    s = _int(samples_per_segment, "samples_per_segment")
    if s < 1:
        raise ConditionError(f"samples_per_segment: expected >= 1, got {s}")
    if len(pts) == 1:
        return pts.copy()
    ext = np.concatenate([2 * pts[:1] - pts[1:2], pts, 2 * pts[-1:] - pts[-2:-1]])
    tangents = tension * (ext[2:] - ext[:-2])  # [K, 2]
    u = np.arange(s) / s
    h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
    h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
    out = []
    for i in range(len(pts) - 1):
        seg = (h00[:, None] * pts[i] + h10[:, None] * tangents[i] + h01[:, None] * pts[i + 1]
               + h11[:, None] * tangents[i + 1])
        seg[0] = pts[i]
        out.append(seg)
    out.append(pts[-1:])
    return np.concatenate(out)


def path_track(path: np.ndarray, st: int, et: int, frames: int, by: str = "time") -> tuple[np.ndarray, np.ndarray]:
    """Sample a dense path (e.g. :func:`spline_path`) over frames ``[st, et)`` of ``frames``.

    path: ``[M, 2]`` (x, y) pixels. by="time": equal steps of the sample index (each spline segment takes the same
    time, like the tool's equal frames per segment); by="arc_length": equal distances along the path (constant
    speed). Frame ``st`` is ``path[0]`` and frame ``et - 1`` is ``path[-1]``. Returns ``track`` float64 ``[T, 2]``
    and ``vis`` int64 ``[T]``, ``(-1, -1)`` / 0 outside ``[st, et)``.
    """
    T, st, et = _int(frames, "frames"), _int(st, "st"), _int(et, "et")
    if not 0 <= st < et <= T:
        raise ConditionError(f"[st, et) = [{st}, {et}): expected 0 <= st < et <= frames = {T}")
    p = _points(path, "path")
    if by not in ("time", "arc_length"):
        raise ConditionError(f"by: expected 'time' or 'arc_length', got {by!r}")
    n = et - st
    track = np.full((T, 2), OFF, dtype=np.float64)
    vis = np.zeros(T, dtype=np.int64)
    vis[st:et] = 1
    if len(p) == 1 or n == 1:
        track[st:et] = p[0]
        return track, vis
    param = np.arange(len(p), dtype=np.float64)
    if by == "arc_length":
        param = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
        if param[-1] == 0:
            track[st:et] = p[0]
            return track, vis
    want = np.linspace(0.0, param[-1], n)
    track[st:et, 0] = np.interp(want, param, p[:, 0])
    track[st:et, 1] = np.interp(want, param, p[:, 1])
    track[st], track[et - 1] = p[0], p[-1]
    return track, vis


# ----------------------------------------------------------------------------- camera anchors
CAMERA_PRESETS = ("static", "pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out", "rotate_cw",
                  "rotate_ccw")
"""Camera motions :func:`camera_anchors` knows. Names say what the camera does; anchors move as the scene content
appears to move: the content moves right when the camera pans left."""


def camera_anchors(height: int, width: int, frames: int, kind: str, amount: float = 0.0, *,
                   grid: tuple[int, int] = (3, 3), obj_id: int,
                   mask: Union[RLEMask, np.ndarray, None] = None, mask_half_size: int = 4) -> list[Trajectory]:
    """Background anchor trajectories (caption ``"None"``) that move as the scene would under a camera motion.

    Anchors start on a ``grid = (rows, cols)`` of cell centres of the H×W image (3×3: the centre is the image
    centre) and move over all ``frames``, reaching the full ``amount`` at the last frame:
    pans: content shifts ``amount`` pixels opposite to the pan (``pan_left``: +x), linearly in time;
    zooms: content scales about the image centre by ``amount`` (``zoom_in``) or ``1 / amount`` (``zoom_out``) at
    the last frame, geometrically in time (``amount >= 1``); rotations: the camera rolls ``amount`` degrees, so
    content turns the other way about the centre (``rotate_cw``: counter-clockwise on screen), linearly in time;
    ``static``: anchors stay put (``amount`` unused). Points may leave the image; they are kept (not clipped).

    obj_id: the id every anchor gets (one background object). mask: the anchors' mask (``[H, W]`` bool or
    :class:`RLEMask`); default a ``2·mask_half_size+1`` px square around each anchor's start.
    """
    h, w, T = _int(height, "height"), _int(width, "width"), _int(frames, "frames")
    if min(h, w, T) < 1:
        raise ConditionError(f"camera_anchors: expected positive height, width, frames, got {h}, {w}, {T}")
    if kind not in CAMERA_PRESETS:
        raise ConditionError(f"kind: expected one of {list(CAMERA_PRESETS)}, got {kind!r}")
    amount = _number(amount, "amount")
    if kind.startswith("zoom") and amount < 1:
        raise ConditionError(f"amount: a zoom factor must be >= 1 (zoom_out shrinks by 1/amount), got {amount}")
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
        raise ConditionError(f"grid: expected (rows, cols), got {grid!r:.40}")
    rows, cols = _int(grid[0], "grid[0]"), _int(grid[1], "grid[1]")
    if rows < 1 or cols < 1:
        raise ConditionError(f"grid: expected rows, cols >= 1, got {grid}")
    ys, xs = (np.arange(rows) + 0.5) * h / rows, (np.arange(cols) + 0.5) * w / cols
    start = np.array([(x, y) for y in ys for x in xs], dtype=np.float64)  # [N, 2]
    tracks = camera_motion(start, (h, w), T, kind, amount)  # [T, N, 2]
    out = []
    for j, p0 in enumerate(start):
        m = _as_mask(mask) if mask is not None else _square_mask(h, w, p0, mask_half_size)
        base = make_trajectory([tuple(p0)], 0, T, obj_id=obj_id, mask=m, frames=T, text=ANCHOR_TEXT)
        out.append(base.replace(points=_tuples(tracks[:, j], np.ones(T, bool), obj_id)))
    return out


def camera_motion(points: np.ndarray, size: tuple[int, int], frames: int, kind: str, amount: float) -> np.ndarray:
    """Where image points ``[N, 2]`` (x, y) go over ``frames`` under a camera preset: ``float64 [T, N, 2]``.

    See :func:`camera_anchors` for the presets; frame 0 is the input, the last frame has the full ``amount``.
    """
    h, w = size
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    s = np.linspace(0.0, 1.0, frames)[:, None, None] if frames > 1 else np.zeros((1, 1, 1))
    c = np.array([w / 2, h / 2])
    direction = {"pan_left": (1, 0), "pan_right": (-1, 0), "pan_up": (0, 1), "pan_down": (0, -1)}
    if kind == "static":
        return np.repeat(p[None], frames, axis=0)
    if kind in direction:
        return p[None] + s * amount * np.array(direction[kind], dtype=np.float64)
    if kind in ("zoom_in", "zoom_out"):
        factor = amount if kind == "zoom_in" else 1 / amount
        return c + (p[None] - c) * factor**s
    # rotations: the camera rolls clockwise -> content turns counter-clockwise on screen (y points down, so a
    # counter-clockwise screen turn by a is the matrix [[cos a, sin a], [-sin a, cos a]] on (x, y))
    sign = 1.0 if kind == "rotate_cw" else -1.0
    a = sign * math.radians(amount) * s[..., 0]  # [T, 1]
    d = p[None] - c
    x = np.cos(a) * d[..., 0] + np.sin(a) * d[..., 1]
    y = -np.sin(a) * d[..., 0] + np.cos(a) * d[..., 1]
    return c + np.stack([x, y], axis=-1)


def _square_mask(h: int, w: int, p: np.ndarray, half: int) -> np.ndarray:
    half = _int(half, "mask_half_size")
    x, y = int(p[0]), int(p[1])
    m = np.zeros((h, w), bool)
    m[max(y - half, 0): y + half + 1, max(x - half, 0): x + half + 1] = True
    return m


# ----------------------------------------------------------------------------- event presets
EDGES = ("left", "right", "top", "bottom")


def enter_from_edge(traj: Trajectory, edge: str, frames_outside: int) -> Trajectory:
    """The object comes in through ``edge``: its first ``frames_outside`` active frames lie outside the image.

    It moves in a straight line, perpendicular to the edge, from outside to its first point, which it reaches at
    frame ``st + frames_outside``; its own path then plays, evenly squeezed into the remaining frames. The step
    per frame outside is the larger of the path's mean speed and (distance to the edge + ``r``), so the frame
    before it crosses is at least ``r`` pixels out. Frame ``st`` is off-image, so the prompt says ``appears``.
    Visibility: 1 outside; the path keeps its own (nearest old frame).
    """
    edge = _edge(edge)
    st, et = active_range(traj)
    f = _int(frames_outside, "frames_outside")
    n = et - st
    if not 1 <= f <= n - 2:
        raise ConditionError(f"frames_outside: expected 1..{n - 2} (trajectory id {traj.id} has {n} active frames "
                             f"and needs 2 for its path), got {f}")
    h, w = traj.mask.size
    old = traj.track[st:et]
    p0 = old[0]
    dist = {"left": p0[0], "right": w - p0[0], "top": p0[1], "bottom": h - p0[1]}[edge]
    speed = float(np.linalg.norm(np.diff(old, axis=0), axis=1).mean()) if n > 1 else 0.0
    step = max(max(dist, 0.0) + float(traj.r), speed, 1.0)
    out_dir = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}[edge]
    approach = p0 + np.arange(f, 0, -1)[:, None] * step * np.array(out_dir, dtype=np.float64)
    src = np.linspace(0.0, n - 1, n - f)  # old active frames shown by the remaining frames
    path = _sample(old, src)
    track = np.array(traj.track)
    track[st:et] = np.concatenate([approach, path])
    vis = list(traj.visibility)
    vis[st:st + f] = [1] * f
    old_vis = traj.visibility[st:et]
    vis[st + f:et] = [old_vis[int(np.floor(s + 0.5))] for s in src]
    return traj.replace(points=_tuples(track, traj.active_frames(), traj.id), visibility=tuple(vis))


def leave_through_edge(traj: Trajectory, edge: str, frames_outside: int) -> Trajectory:
    """The object leaves through ``edge``: its last ``frames_outside`` active frames lie outside the image.

    :func:`enter_from_edge` played backwards: the path plays squeezed into the first frames, then the object moves
    straight out through the edge from its last point.
    """
    return _reversed(enter_from_edge(_reversed(traj), edge, frames_outside))


def pass_behind(traj: Trajectory, f0: int, f1: int) -> Trajectory:
    """The object is hidden (visibility 0) on frames ``f0..f1`` inclusive, its path unchanged (:func:`ops.erase`)."""
    return erase(traj, f0, f1)


def stop_at(traj: Trajectory, frame: int) -> Trajectory:
    """The object stops: from ``frame`` (inside its active range) to its last active frame it stays where it is at
    ``frame``. Visibility is unchanged."""
    st, et = active_range(traj)
    f = _active_frame(traj, frame, st, et)
    track = np.array(traj.track)
    track[f:et] = track[f]
    return traj.replace(points=_tuples(track, traj.active_frames(), traj.id))


def turn_back(traj: Trajectory, frame: int) -> Trajectory:
    """The object turns around at ``frame`` and retraces its path: frame ``frame + k`` shows the point (and
    visibility) of ``frame - k``; if it gets back to its start before its last active frame, it waits there."""
    st, et = active_range(traj)
    f = _active_frame(traj, frame, st, et)
    src = np.maximum(2 * f - np.arange(f, et), st)
    track = np.array(traj.track)
    track[f:et] = track[src]
    vis = list(traj.visibility)
    vis[f:et] = [traj.visibility[s] for s in src]
    return traj.replace(points=_tuples(track, traj.active_frames(), traj.id), visibility=tuple(vis))


# ----------------------------------------------------------------------------- helpers
def _active(track: np.ndarray) -> tuple[int, int]:
    idx = np.flatnonzero(~np.all(track == -1, axis=1))
    if len(idx) == 0:
        raise ConditionError("track: no active frames (every point is [-1, -1])")
    st, et = int(idx[0]), int(idx[-1]) + 1
    if len(idx) != et - st:
        raise ConditionError(f"track: active frames [{st}, {et}) have a [-1, -1] gap; expected one contiguous range")
    return st, et


def _sample(old: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``old`` [n, 2] at fractional indices ``src`` (linear in between, exact at whole indices)."""
    n = len(old)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (src - i0)[:, None]
    return np.where(w == 0, old[i0], (1 - w) * old[i0] + w * old[i1])


def _reversed(traj: Trajectory) -> Trajectory:
    """The trajectory with its active range played backwards (inactive frames stay where they are)."""
    st, et = active_range(traj)
    track = np.array(traj.track)
    track[st:et] = track[st:et][::-1]
    vis = list(traj.visibility)
    vis[st:et] = vis[st:et][::-1]
    return traj.replace(points=_tuples(track, traj.active_frames(), traj.id), visibility=tuple(vis))


def _edge(edge) -> str:
    if edge not in EDGES:
        raise ConditionError(f"edge: expected one of {list(EDGES)}, got {edge!r}")
    return edge


def _active_frame(traj: Trajectory, frame, st: int, et: int) -> int:
    f = _int(frame, "frame")
    if not st <= f < et:
        raise ConditionError(f"frame: expected a frame in trajectory id {traj.id}'s active range [{st}, {et}), "
                             f"got {f}")
    return f
