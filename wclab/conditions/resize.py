"""Re-target a scene to another image size and/or frame count (e.g. run a 480×832×81 drawing at 128×224×17)."""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from wclab.conditions.rle import RLEMask
from wclab.conditions.scene import Scene, Trajectory
from wclab.errors import ConditionError


def resize_scene(scene: Scene, height: Optional[int] = None, width: Optional[int] = None,
                 frames: Optional[int] = None) -> Scene:
    """The same scene at ``height × width`` pixels and ``frames`` frames (``None`` keeps a dimension).

    Points scale with the image (x·W'/W, y·H'/H; the ``(-1, -1)`` placeholder stays); masks are resized with
    nearest-neighbour; time is resampled linearly: new frame j sits at old time j·(T-1)/(T'-1), its point is
    interpolated between the two neighbouring old frames when both are drawn (else the nearest one is taken),
    and its visibility is the nearest old frame's. ``r`` (the drawing tool's radius) is kept as drawn.
    """
    H, W, T = scene.height, scene.width, scene.frames
    H2 = H if height is None else height
    W2 = W if width is None else width
    T2 = T if frames is None else frames
    for name, v in (("height", H2), ("width", W2), ("frames", T2)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConditionError(f"resize_scene: {name}: expected a positive integer, got {v!r}")
    if (H2, W2, T2) == (H, W, T):
        return scene
    sx, sy = W2 / W, H2 / H
    u = np.arange(T2) * ((T - 1) / (T2 - 1)) if T2 > 1 else np.zeros(1)
    lo = np.floor(u).astype(int)
    hi = np.minimum(lo + 1, T - 1)
    frac = u - lo
    nearest = np.rint(u).astype(int)

    def resize_traj(t: Trajectory) -> Trajectory:
        track, active = t.track, t.active_frames()
        both = active[lo] & active[hi]
        new = np.where(both[:, None], track[lo] * (1 - frac)[:, None] + track[hi] * frac[:, None], track[nearest])
        new_active = np.where(both, True, active[nearest])
        new = np.where(new_active[:, None], new * (sx, sy), -1.0)
        mask = t.mask
        if (H2, W2) != (H, W):
            arr = cv2.resize(t.mask.decode().astype(np.uint8), (W2, H2), interpolation=cv2.INTER_NEAREST)
            mask = RLEMask.from_array(arr.astype(bool))
        return t.replace(points=new, visibility=t.vis[nearest], mask=mask)

    return scene.replace(trajectories=[resize_traj(t) for t in scene.trajectories], height=H2, width=W2, frames=T2)
