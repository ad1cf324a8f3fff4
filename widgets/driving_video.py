"""A driving video for the trajectory editor: read it, show its first frame at the scene's size, follow points.

The video keeps its own size and frame count. Its first frame is shown fitted to the scene exactly as the start
image is (:func:`widgets.images.fit_image`: resized to cover ``H × W``, centre-cropped), so a video whose first
frame is the start image lines up with it. Points clicked on that frame (scene pixels) are mapped into the
video's own pixels for tracking (full-resolution Lucas-Kanade) and the tracks mapped back, with the one affine
map of :func:`widgets.images.fit_geometry`: per axis ``x_video = (x_scene + left + 0.5) · w / nw − 0.5`` and its
inverse (no rounding). A tracked point may leave the H × W crop while still in the video: it then lies off-image
in the scene (as for an object leaving through an edge); it is lost (invisible from then on) where it leaves the
video, where LK fails, or where the forward-backward check fails
(:func:`wclab.conditions.tracks.tracks_from_video`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from wclab.conditions.tracks import Tracks, tracks_from_video
from widgets.images import ImageError, fit_geometry, fit_image

VideoLike = Union[str, Path, np.ndarray]


def read_video(path: Union[str, Path]) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` frames of a video file (imageio-ffmpeg, the ffmpeg mediapy uses here), or of a
    ``.npy`` array of that shape."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such video file")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ImageError(f"{path}: cannot read as a .npy array ({e})") from None
    import imageio_ffmpeg  # mediapy.read_video passes -vsync, which the bundled ffmpeg 9 no longer accepts

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    except Exception as e:  # noqa: BLE001 — ffmpeg reports unreadable files in several ways
        raise ImageError(f"{path}: cannot read as a video ({type(e).__name__}: {str(e).splitlines()[0]:.200})") \
            from None
    if not frames:
        raise ImageError(f"{path}: the video has no frames")
    return np.stack(frames)


@dataclass(frozen=True, eq=False)
class DrivingVideo:
    """A video (``frames`` uint8 ``[Tv, h, w, 3]``, read-only) to take point tracks from, for a ``height × width``
    scene; ``source`` names it in messages."""

    frames: np.ndarray
    height: int
    width: int
    source: str = "array"

    @classmethod
    def load(cls, video: VideoLike, height: int, width: int, source: str = "") -> "DrivingVideo":
        """From a path (:func:`read_video`) or an array ``uint8 [Tv, h, w, 3]`` (``[Tv, h, w, 4]``: alpha dropped)."""
        if isinstance(video, (str, Path)):
            source = source or str(video)
            video = read_video(video)
        v = np.asarray(video)
        if v.ndim != 4 or v.shape[-1] not in (3, 4) or v.dtype != np.uint8 or min(v.shape[:3]) < 1:
            raise ImageError(f"driving video: expected uint8 [T, H, W, 3] with T >= 1, got {v.dtype} {list(v.shape)}")
        v = np.ascontiguousarray(v[..., :3])
        v.setflags(write=False)
        return cls(v, int(height), int(width), source or "array")

    @property
    def count(self) -> int:
        """Tv, the video's frame count."""
        return self.frames.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the video's frames."""
        return self.frames.shape[1], self.frames.shape[2]

    @property
    def resized(self) -> bool:
        return self.size != (self.height, self.width)

    def first_frame(self) -> np.ndarray:
        """``uint8 [height, width, 3]``: the first frame fitted to the scene (as the start image)."""
        return fit_image(self.frames[0], self.height, self.width)

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, offset)`` per axis (x, y): ``scene = (video + 0.5) · scale − 0.5 − offset``."""
        h, w = self.size
        nh, nw, top, left = fit_geometry(h, w, self.height, self.width)
        return np.array([nw / w, nh / h]), np.array([left, top], float)

    def to_video(self, points: np.ndarray) -> np.ndarray:
        """``[..., 2]`` (x, y) scene pixels → video pixels."""
        scale, offset = self._affine()
        return (np.asarray(points, np.float64) + offset + 0.5) / scale - 0.5

    def to_scene(self, points: np.ndarray) -> np.ndarray:
        """``[..., 2]`` (x, y) video pixels → scene pixels."""
        scale, offset = self._affine()
        return (np.asarray(points, np.float64) + 0.5) * scale - 0.5 - offset

    def track(self, points: Sequence[tuple[float, float]], fb_threshold: float = 1.0) -> Tracks:
        """Follow ``points`` ``[N, 2]`` (x, y scene pixels on the first frame) through the video at its own size
        (:func:`tracks_from_video`); returns the tracks in scene pixels over the video's Tv frames.

        A scene point maps inside the video's pixel grid except within half a video pixel of its border when the
        video is upscaled; it is moved onto the border there (the only change made to a clicked point)."""
        h, w = self.size
        pts = self.to_video(np.asarray(points, np.float64).reshape(-1, 2))
        pts = np.clip(pts, 0.0, [w - 1, h - 1])
        tracks = tracks_from_video(self.frames, pts, fb_threshold=fb_threshold)
        return Tracks(self.to_scene(tracks.points), tracks.visibility)

    def describe(self) -> str:
        h, w = self.size
        fit = f", shown fitted to {self.width}x{self.height}" if self.resized else ""
        return f"{self.source}: {self.count} frames {w}x{h}{fit}"
