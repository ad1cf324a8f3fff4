"""Point tracks as arrays: import/export in ATI's and Wan-Move's file layouts, and tracks from a driving video.

:class:`Tracks` holds ``points`` float32 ``[T, N, 2]`` (x, y) pixels and ``visibility`` bool ``[T, N]`` for N
points over T frames; it converts to and from scene trajectories (the drawing tool's format).

File layouts (facts read from the projects' public code; no code taken from them):

* ATI (github.com/bytedance/ATI, ``tools/trajectory_editor/app.py`` writes, ``wan/utils/motion.py`` reads):
  a ``.pth`` file is ``torch.save`` of *bytes*; the bytes are an ``.npz`` (``np.savez_compressed``) whose key
  ``"array"`` holds float32 ``[N, S, 1, 3]``: per track, S frames of ``(x, y, visible)`` in pixels of the input
  image, all multiplied by ``quant_multi = 8``. The editor writes S = 121 frames (24 fps; unreached frames are
  zeros, i.e. invisible) and may add a 4th zero channel; the loader divides by 8, keeps frame 0 and turns the
  other 120 frames into 80 by ``repeat_interleave(2)[1::3]`` (the model's 81 frames at 16 fps), so model frame
  k >= 1 shows file frame ``1 + (3k - 2) // 2``. Here ``.npy`` in ATI style holds that same quantised array.
* Wan-Move (github.com/ali-vilab/Wan-Move, ``generate.py``, ``gradio_app.py``, ``wan/modules/trajectory.py``):
  two ``.npy`` files, ``tracks.npy`` float ``[1, F, N, 2]`` (x, y) pixels of the generated frames and
  ``visibility.npy`` ``[1, F, N]`` (the demo writes float ones; nonzero = visible), F = 81 model frames; MoveBench
  names them ``<id>_tracks.npy`` / ``<id>_visibility.npy``; the loaders also accept them without the leading 1.
  Wan-Move has no ``.pth`` form; here a Wan-Move-style ``.pth`` is ``torch.save({"tracks": float32 [1, F, N, 2],
  "visibility": bool [1, F, N]})``.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from wclab.conditions.ops import _as_mask, _int, _number, _tuples, add_trajectory, mask_radius
from wclab.conditions.rle import RLEMask
from wclab.conditions.scene import OFF, Scene, Trajectory
from wclab.errors import ConditionError

ATI_QUANT = 8
"""ATI stores ``(x, y, visible)`` multiplied by this (``quant_multi``)."""

STYLES = ("ati", "wanmove")
PathLike = Union[str, Path]
MaskLike = Union[RLEMask, np.ndarray]


@dataclass(frozen=True)
class Tracks:
    """N point tracks over T frames: ``points`` float32 ``[T, N, 2]`` (x, y) pixels, ``visibility`` bool ``[T, N]``.

    ``(-1, -1)`` marks a frame where a track has no point (outside a trajectory's ``[st, et)``).
    """

    points: np.ndarray
    visibility: np.ndarray

    def __post_init__(self):
        try:
            p = np.array(self.points, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ConditionError(f"points: expected a [T, N, 2] array of numbers ({e})") from None
        if p.ndim != 3 or p.shape[2] != 2 or p.shape[0] == 0:
            raise ConditionError(f"points: expected shape [T, N, 2] with T >= 1, got {p.shape}")
        if not np.isfinite(p).all():
            raise ConditionError("points: expected finite coordinates (mark lost points with visibility False)")
        v = np.asarray(self.visibility)
        if v.shape != p.shape[:2]:
            raise ConditionError(f"visibility: expected shape {list(p.shape[:2])} (T, N) to match points, got "
                                 f"{list(v.shape)}")
        if v.dtype != bool and not (np.issubdtype(v.dtype, np.number) and np.isfinite(v).all()):
            raise ConditionError(f"visibility: expected bool or numbers, got {v.dtype}")
        v = v.astype(bool) if v.dtype == bool else v != 0
        p.setflags(write=False)
        v.setflags(write=False)
        object.__setattr__(self, "points", p)
        object.__setattr__(self, "visibility", v)

    @property
    def frames(self) -> int:
        return self.points.shape[0]

    @property
    def count(self) -> int:
        """N, the number of tracks."""
        return self.points.shape[1]

    # ------------------------------------------------------------------ scenes
    @classmethod
    def from_scene(cls, scene: Scene, include_anchors: bool = True) -> "Tracks":
        """One track per trajectory (in scene order; anchors too unless ``include_anchors=False``).

        Points are the trajectory's points (``(-1, -1)`` outside its ``[st, et)``); visible where the trajectory
        has a point and visibility > 0.5.
        """
        trajs = [t for t in scene.trajectories if include_anchors or not t.is_anchor]
        if not trajs:
            raise ConditionError("scene: no trajectories to make tracks from")
        pts = np.stack([t.track for t in trajs], axis=1)
        vis = np.stack([t.active_frames() & (t.vis > 0.5) for t in trajs], axis=1)
        return cls(pts, vis)

    def to_trajectories(self, masks: Union[MaskLike, Sequence[MaskLike]], captions: Union[str, Sequence[str]],
                        obj_ids: Optional[Sequence[int]] = None, frames: Optional[int] = None) -> list[Trajectory]:
        """One :class:`Trajectory` per track, in the drawing tool's form.

        masks: one ``[H, W]`` mask (or :class:`RLEMask`) for all tracks, or one per track; ``r`` comes from it as
        in the tool. captions: one per track (or one for all); ``"None"`` makes an anchor. obj_ids: default
        1..N. frames: resample the time axis to this many frames first (linear in time, visibility of the
        nearest frame); default keep T. A frame whose point is ``(-1, -1)`` has no point (visibility 0); other
        frames keep their point, with visibility 1 or 0.
        """
        tr = self if frames is None else self.resampled(frames)
        n = tr.count
        mask_list = _per_track(masks, n, "masks", (RLEMask, np.ndarray))
        caption_list = _per_track(captions, n, "captions", (str,))
        ids = list(range(1, n + 1)) if obj_ids is None else [_int(i, f"obj_ids[{k}]") for k, i in enumerate(obj_ids)]
        if len(ids) != n:
            raise ConditionError(f"obj_ids: expected {n} ids (one per track), got {len(ids)}")
        out = []
        for j in range(n):
            pts = tr.points[:, j].astype(np.float64)
            active = ~np.all(pts == -1, axis=1)
            pts[~active] = OFF
            vis = (tr.visibility[:, j] & active).astype(int)
            rle = _as_mask(mask_list[j])
            text = caption_list[j]
            if not isinstance(text, str) or not text.strip():
                raise ConditionError(f"captions[{j}]: expected a caption or 'None' for an anchor, got {text!r:.40}")
            out.append(Trajectory(points=_tuples(pts, active, ids[j]), visibility=tuple(int(v) for v in vis),
                                  r=mask_radius(rle), id=ids[j], mask=rle, text=text))
        return out

    # ------------------------------------------------------------------ time
    def resampled(self, frames: int) -> "Tracks":
        """The tracks over ``frames`` frames spanning the same time: linear in time; visibility of the nearest frame."""
        f = _int(frames, "frames")
        if f < 1:
            raise ConditionError(f"frames: expected >= 1, got {f}")
        if f == self.frames:
            return self
        s = np.linspace(0.0, self.frames - 1, f)
        i0 = np.floor(s).astype(int)
        i1 = np.minimum(i0 + 1, self.frames - 1)
        w = (s - i0)[:, None, None]
        p = self.points.astype(np.float64)
        pts = np.where(w == 0, p[i0], (1 - w) * p[i0] + w * p[i1])
        return Tracks(pts, self.visibility[np.floor(s + 0.5).astype(int)])


def add_tracks(scene: Scene, tracks: Tracks, masks: Union[MaskLike, Sequence[MaskLike]],
               captions: Union[str, Sequence[str]], obj_ids: Optional[Sequence[int]] = None,
               resample: bool = False) -> Scene:
    """``scene`` with one trajectory per track appended (:meth:`Tracks.to_trajectories`, :func:`ops.add_trajectory`).

    obj_ids: default the ids after the scene's largest. The tracks must have the scene's frame count, unless
    ``resample=True`` (then they are resampled in time to it).
    """
    if tracks.frames != scene.frames and not resample:
        raise ConditionError(f"tracks: {tracks.frames} frames, the scene has {scene.frames}; pass resample=True to "
                             "stretch them in time")
    if obj_ids is None:
        first = max((t.id for t in scene.trajectories), default=0) + 1
        obj_ids = list(range(first, first + tracks.count))
    for t in tracks.to_trajectories(masks, captions, obj_ids, frames=scene.frames):
        scene = add_trajectory(scene, t)
    return scene


# ----------------------------------------------------------------------------- files
def save_tracks(tracks: Tracks, path: PathLike, style: str = "ati", *, ati_rate: bool = True) -> list[Path]:
    """Write ``tracks`` to ``path`` (``.npy`` or ``.pth``) in ATI's or Wan-Move's layout (module docstring).

    style="ati": ``[N, S, 1, 3]`` float32 ``(x, y, visible) × 8``; with ``ati_rate`` (default) the T model frames
    (16 fps, T odd) become S = 1 + 3(T - 1)/2 frames at 24 fps such that ATI's loader gives back exactly these T
    frames (81 -> 121); the frames its sampling skips get the midpoint of their neighbours (visible if both are).
    style="wanmove": ``tracks`` float32 ``[1, T, N, 2]`` + ``visibility`` bool ``[1, T, N]``; for ``.npy`` the path
    must end in ``tracks.npy`` and the visibility goes next to it, ``...tracks.npy`` -> ``...visibility.npy``.
    Returns the files written.
    """
    if not isinstance(tracks, Tracks):
        raise ConditionError(f"tracks: expected a Tracks, got {type(tracks).__name__}")
    if style not in STYLES:
        raise ConditionError(f"style: expected one of {list(STYLES)}, got {style!r}")
    path = Path(path)
    kind = _file_kind(path)
    if style == "ati":
        arr = _to_ati_array(_to_ati_rate(tracks) if ati_rate else tracks)
        if kind == "npy":
            np.save(path, arr)
        else:
            import torch
            bio = io.BytesIO()
            np.savez_compressed(bio, array=arr)
            torch.save(bio.getvalue(), path)
        return [path]
    pts, vis = tracks.points[None].copy(), tracks.visibility[None].copy()
    if kind == "npy":
        vis_path = _visibility_path(path)
        np.save(path, pts)
        np.save(vis_path, vis)
        return [path, vis_path]
    import torch
    torch.save({"tracks": torch.from_numpy(pts), "visibility": torch.from_numpy(vis)}, path)
    return [path]


def load_tracks(path: PathLike, *, visibility: Optional[PathLike] = None, ati_rate: bool = True) -> Tracks:
    """Read tracks written by ATI, Wan-Move or :func:`save_tracks` (``.npy`` or ``.pth``; the layout is detected).

    An ATI array ``[N, S, 1, C >= 3]`` is divided by 8; with ``ati_rate`` (default) its S frames at 24 fps become
    T = 1 + 2(S - 1)/3 model frames by ATI's own sampling (121 -> 81). A Wan-Move tracks array ``[1, T, N, 2]`` or
    ``[T, N, 2]`` takes its visibility from ``visibility`` (default the ``...visibility.npy`` beside a
    ``...tracks.npy``). ``.pth`` files are read with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    kind = _file_kind(path)
    if not path.exists():
        raise ConditionError(f"{path}: no such tracks file")
    if kind == "npy":
        arr = _np_load(path)
        if arr.ndim == 4 and arr.shape[2] == 1 and arr.shape[3] >= 3:
            return _from_ati_array(arr, ati_rate, str(path))
        vis_path = Path(visibility) if visibility is not None else _visibility_path(path)
        if not vis_path.exists():
            raise ConditionError(f"{path}: Wan-Move tracks need a visibility file; {vis_path} does not exist "
                                 "(pass visibility=...)")
        return _from_wanmove(arr, _np_load(vis_path), str(path))
    import torch
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise ConditionError(f"{path}: cannot read as a weights-only torch file ({type(e).__name__}: {e})") from None
    if isinstance(obj, (bytes, bytearray)):
        try:
            with np.load(io.BytesIO(bytes(obj))) as npz:
                arr = npz["array"]
        except Exception as e:
            raise ConditionError(f"{path}: ATI track bytes are not an .npz with key 'array' ({e})") from None
        return _from_ati_array(arr, ati_rate, str(path))
    if isinstance(obj, dict) and {"tracks", "visibility"} <= set(obj):
        return _from_wanmove(np.asarray(obj["tracks"]), np.asarray(obj["visibility"]), str(path))
    raise ConditionError(f"{path}: expected ATI track bytes or a dict with 'tracks' and 'visibility', got "
                         f"{type(obj).__name__}")


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".pth"):
        raise ConditionError(f"path: expected a .npy or .pth file, got {str(path)!r}")
    return suffix[1:]


def _visibility_path(path: Path) -> Path:
    if not path.name.endswith("tracks.npy"):
        raise ConditionError(f"path: a Wan-Move-style .npy must be named '...tracks.npy' (its visibility goes to "
                             f"'...visibility.npy'), got {path.name!r}")
    return path.with_name(path.name[: -len("tracks.npy")] + "visibility.npy")


def _np_load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConditionError(f"{path}: cannot read as a .npy array ({e})") from None


def _to_ati_array(tracks: Tracks) -> np.ndarray:
    xyv = np.concatenate([tracks.points, tracks.visibility[..., None].astype(np.float32)], axis=-1)  # [S, N, 3]
    return (ATI_QUANT * xyv).transpose(1, 0, 2)[:, :, None, :].astype(np.float32)


def _from_ati_array(arr: np.ndarray, ati_rate: bool, where: str) -> Tracks:
    a = np.asarray(arr)
    if a.ndim != 4 or a.shape[2] != 1 or a.shape[3] < 3 or not np.issubdtype(a.dtype, np.number):
        raise ConditionError(f"{where}: expected an ATI array [N, S, 1, 3] of numbers, got {a.dtype} {list(a.shape)}")
    a = a[:, :, 0, :3].astype(np.float64).transpose(1, 0, 2) / ATI_QUANT  # [S, N, 3]
    tracks = Tracks(a[..., :2], a[..., 2] > 0.5)
    return _from_ati_rate(tracks, where) if ati_rate else tracks


def _ati_source_frames(t: int) -> np.ndarray:
    """The 24-fps file frame ATI's loader shows at each of its ``t`` model frames: 0, then ``1 + (3k - 2) // 2``."""
    k = np.arange(1, t)
    return np.concatenate([[0], 1 + (3 * k - 2) // 2])


def _to_ati_rate(tracks: Tracks) -> Tracks:
    t = tracks.frames
    if (t - 1) % 2:
        raise ConditionError(f"tracks: ATI's 24 fps layout needs an odd frame count (1 + 2m; the model's 4k + 1), got "
                             f"{t}; pass ati_rate=False to write the frames as they are")
    s = 1 + 3 * (t - 1) // 2
    src = _ati_source_frames(t)
    pts = np.zeros((s, tracks.count, 2), np.float32)
    vis = np.zeros((s, tracks.count), bool)
    pts[src], vis[src] = tracks.points, tracks.visibility
    missing = np.setdiff1d(np.arange(s), src)  # each lies between two kept frames
    pts[missing] = (pts[missing - 1].astype(np.float64) + pts[missing + 1]) / 2
    vis[missing] = vis[missing - 1] & vis[missing + 1]
    return Tracks(pts, vis)


def _from_ati_rate(tracks: Tracks, where: str) -> Tracks:
    s = tracks.frames
    if (s - 1) % 3:
        raise ConditionError(f"{where}: ATI frames S = {s}: expected S - 1 divisible by 3 (121 for 81 model frames); "
                             "pass ati_rate=False to read the frames as they are")
    src = _ati_source_frames(1 + 2 * (s - 1) // 3)
    return Tracks(tracks.points[src], tracks.visibility[src])


def _from_wanmove(pts: np.ndarray, vis: np.ndarray, where: str) -> Tracks:
    p, v = np.asarray(pts), np.asarray(vis)
    if p.ndim == 4 and p.shape[0] == 1:
        p = p[0]
    if v.ndim == 3 and v.shape[0] == 1:
        v = v[0]
    if p.ndim != 3 or p.shape[-1] != 2 or not np.issubdtype(p.dtype, np.number):
        raise ConditionError(f"{where}: expected Wan-Move tracks [1, T, N, 2] or [T, N, 2] of numbers, got "
                             f"{p.dtype} {list(np.asarray(pts).shape)}")
    if v.shape != p.shape[:2]:
        raise ConditionError(f"{where}: visibility shape {list(np.asarray(vis).shape)} does not match tracks "
                             f"[T, N] = {list(p.shape[:2])}")
    return Tracks(p, v)


# ----------------------------------------------------------------------------- tracks from a video
def lk_track(video: np.ndarray, queries: np.ndarray, win: int = 15, levels: int = 3,
             fb_threshold: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``) from query points through ``video`` uint8 ``[T, H, W, 3]``.

    queries: ``[Q, 3]`` rows (frame, x, y) pixels. Each point is followed forward and backward from its query
    frame, frame by frame, and lost from the first frame where LK fails, the point leaves the image, or (with
    ``fb_threshold``, pixels) tracking that step back lands further than ``fb_threshold`` from where it started
    (forward-backward check). Returns ``tracks`` float64 ``[Q, T, 2]`` (NaN where lost) and ``found`` bool
    ``[Q, T]``.
    """
    import cv2  # imported here so that `import wclab.conditions` stays light

    v = _video(video)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in v]
    n, h, w = v.shape[:3]
    q = np.asarray(queries, np.float64).reshape(-1, 3)
    tracks = np.full((len(q), n, 2), np.nan)
    found = np.zeros((len(q), n), bool)
    params = dict(winSize=(win, win), maxLevel=levels,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    for i, (t0, x, y) in enumerate(q):
        t0 = int(t0)
        if not 0 <= t0 < n:
            raise ConditionError(f"queries[{i}]: frame {t0} outside the video's [0, {n})")
        tracks[i, t0], found[i, t0] = (x, y), True
        for order in (range(t0 + 1, n), range(t0 - 1, -1, -1)):
            p = np.array([[[x, y]]], np.float32)
            prev = t0
            for t in order:
                nxt, status, _ = cv2.calcOpticalFlowPyrLK(gray[prev], gray[t], p, None, **params)
                px, py = nxt[0, 0]
                if not status[0, 0] or not (0 <= px < w and 0 <= py < h):
                    break
                if fb_threshold is not None:
                    back, bstatus, _ = cv2.calcOpticalFlowPyrLK(gray[t], gray[prev], nxt, None, **params)
                    if not bstatus[0, 0] or np.hypot(*(back[0, 0] - p[0, 0])) > fb_threshold:
                        break
                tracks[i, t], found[i, t] = (px, py), True
                p, prev = nxt, t
    return tracks, found


def tracks_from_video(video: np.ndarray, points: Sequence[Sequence[float]], *, win: int = 15, levels: int = 3,
                      fb_threshold: float = 1.0) -> Tracks:
    """Follow ``points`` ``[N, 2]`` (x, y) pixels, clicked in the first frame, through ``video`` uint8 ``[T, H, W, 3]``.

    OpenCV pyramidal Lucas-Kanade frame to frame (:func:`lk_track`) with a forward-backward check: a point is
    lost (visibility False from then on, its position held at the last tracked one) when LK fails, it leaves
    the image, or tracking back misses by more than ``fb_threshold`` pixels (e.g. when it is occluded).
    """
    v = _video(video)
    try:
        pts = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConditionError(f"points: expected (x, y) pairs of numbers ({e})") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0 or not np.isfinite(pts).all():
        raise ConditionError(f"points: expected a non-empty [N, 2] array of finite (x, y), got shape {pts.shape}")
    h, w = v.shape[1:3]
    off = ~((pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h))
    if off.any():
        raise ConditionError(f"points[{int(np.flatnonzero(off)[0])}]: expected a point inside the first frame "
                             f"({w}x{h}), got {pts[off][0].tolist()}")
    thr = _number(fb_threshold, "fb_threshold")
    queries = np.concatenate([np.zeros((len(pts), 1)), pts], axis=1)
    tr, found = lk_track(v, queries, win=_int(win, "win"), levels=_int(levels, "levels"), fb_threshold=thr)
    held = tr.copy()
    for t in range(1, held.shape[1]):
        lost = ~found[:, t]
        held[lost, t] = held[lost, t - 1]
    return Tracks(held.transpose(1, 0, 2), found.T)


def _video(video) -> np.ndarray:
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8 or v.shape[0] == 0:
        raise ConditionError(f"video: expected uint8 [T, H, W, 3] with T >= 1, got {v.dtype} {list(v.shape)}")
    return v


def _per_track(value, n: int, name: str, single: tuple) -> list:
    if isinstance(value, single) and not (isinstance(value, np.ndarray) and value.ndim == 3):
        return [value] * n
    items = list(value)
    if len(items) != n:
        raise ConditionError(f"{name}: expected one for all tracks or {n} (one per track), got {len(items)}")
    return items
