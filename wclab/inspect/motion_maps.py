"""Motion maps: where the video tokens on a trajectory's path look, through self-attention, in every latent frame.

For each selected trajectory and latent frame f, its query tokens are its token-mask cells in frame f (the box the
encoder draws for the trajectory's token mask, :func:`trajectory_token_mask`). In every selected forward (step ×
CFG branch × expert) and block, the self-attention probabilities of those query rows onto all S video tokens are
summed over the selected heads and over the frame's query tokens, giving ``[T·F', S]`` (T trajectories) that is
added to a running sum per step. ``map(t)`` divides by the number of terms, so each query frame's row is the mean
attention distribution of its query tokens: ``[F'(query), F'(key), h/2, w/2]``, summing to 1 over all keys.

How: hooks on ``self_attn.hook_q`` / ``hook_k`` (q and k ``[B, S, heads, head_dim]`` after RMSNorm and RoPE, as
the block's attention kernel takes them) hand them to a :class:`QueryRowMass`, which recomputes only the selected
query rows — ``softmax(q_rows·kᵀ/√d)`` over all S keys, q·kᵀ accumulated in float32 from the model's own q and k
(the DiT's attention uses the default scale 1/√head_dim) — a few heads and rows at a time, and multiplies by the
0/1 row→(trajectory, frame) selector. The block's own fused attention still serves every row. No S×S pattern is
formed and nothing syncs with the host: the state is one float32 ``[T·F', S]`` tensor per step. On a GPU with a
bf16/fp16 model the recomputation runs in :mod:`wclab.inspect.fused_row_mass`'s Triton kernels (two passes over
the keys: each row's log-sum-exp, then its probabilities summed per group, never stored); elsewhere float32
logits in chunks (``torch.compile``'d on CUDA), with the same numbers up to summation order. The same hooks work
on a bare :class:`wclab.models.dit.DiT` (``model.hooks(self_attention_hooks(...))``), which is how
``bench/bench_dit.py`` measures their cost (stages ``capture_motion`` and ``capture_motion_compiled``).

Cost: the recomputation's time grows with the number of query rows (two q·kᵀ passes over all keys per row, block
and head): select blocks, heads or trajectories to keep it small. Under sequence parallelism (`wclab.parallel`) a
rank's hooks see only its token slice; motion maps need the whole sequence and raise there.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Literal, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from wclab.conditions import Scene
from wclab.encode.channels import (ENTERING_TOKEN_HALF_SIZE, TOKEN_VIS_THRESHOLD, boxes_to_cells, group_means,
                                   mask_reach)
from wclab.inspect import fused_row_mass
from wclab.inspect.attention import (CHUNK_ELEMENTS, CompiledOnce, HookRecorder, InspectError, _checked, _qk_logits,
                                    chunk_sizes)
from wclab.models.hooks import current_hook_context
from wclab.inspect.display import expand_latent_frames, heatmap_overlay, overlay_trajectories, show_video
from wclab.sizes import FRAMES_PER_LATENT, TOKEN_CELL, latent_frames

Drawn = Literal["visible", "path"]


# ------------------------------------------------------------------------------------------- token cells
def trajectory_token_mask(scene: Scene, index: int, drawn: Drawn = "visible") -> np.ndarray:
    """``bool [F', H/16, W/16]``: the DiT tokens of trajectory ``index`` (position in ``scene.trajectories``) per
    latent frame.

    drawn="visible": the box the encoder draws into its object's token mask (half-size: the reach of the object's
    frame-0 mask, or 120 px for an entering object; only where visibility > 0.5) — an object with one trajectory
    has exactly its token mask. drawn="path": the same box on every latent frame whose frame 4f (frame 0 for f = 0)
    has a drawn point, visible or not, centred on the mean of the group's drawn points (as the encoder's centre
    where the whole group is drawn); where that box is empty (empty mask) the token under the centre, if on the
    image.
    """
    trajs = scene.trajectories
    if not -len(trajs) <= int(index) < len(trajs):
        raise InspectError(f"trajectory: expected an index in 0..{len(trajs) - 1}, got {index}")
    if drawn not in ("visible", "path"):
        raise InspectError(f"drawn: expected 'visible' or 'path', got {drawn!r}")
    traj = trajs[int(index)]
    H, W, F = scene.height, scene.width, latent_frames(scene.frames)
    half = (ENTERING_TOKEN_HALF_SIZE,) * 2 if traj.starts_off_image(H, W) else mask_reach(traj)
    out = np.zeros((F, H // TOKEN_CELL, W // TOKEN_CELL), bool)
    if drawn == "visible":
        centre, vis = group_means(traj.track), traj.vis[::FRAMES_PER_LATENT]
        cells, ok = boxes_to_cells(centre, half, vis, TOKEN_VIS_THRESHOLD, H, W, TOKEN_CELL)
    else:
        centre, present = _drawn_centres(traj.track, traj.active_frames())
        cells, ok = boxes_to_cells(centre, half, present.astype(np.float64), 0.5, H, W, TOKEN_CELL)
    for f in np.flatnonzero(ok):
        x1, x2, y1, y2 = cells[f]
        out[f, y1:y2, x1:x2] = True
    if drawn == "path":
        for f in np.flatnonzero(present & ~ok):
            x, y = centre[f]
            if 0 <= x < W and 0 <= y < H:
                out[f, int(y // TOKEN_CELL), int(x // TOKEN_CELL)] = True
    return out


def _drawn_centres(track: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(centres float64 [F', 2], present bool [F'])``: per latent frame, the encoder's group mean where the whole
    group is drawn, else the mean of its drawn points; present where frame 4f has a drawn point."""
    centres = group_means(track)
    groups = [np.array([0])] + [np.arange(4 * f - 3, 4 * f + 1) for f in range(1, len(centres))]
    for f, g in enumerate(groups):
        drawn = g[active[g]]
        if 0 < len(drawn) < len(g):
            centres[f] = track[drawn].mean(axis=0)
    return centres, active[::FRAMES_PER_LATENT].copy()


# ------------------------------------------------------------------------------------------- hooks, reduction
def self_attention_hooks(modules: Iterable[str], reduce: Callable[[Tensor, Tensor], None],
                         wanted: Callable[[], bool] = lambda: True) -> list[tuple[str, Callable]]:
    """Hooks that hand each listed self-attention module's q and k to ``reduce(q, k)`` once per forward.

    modules: ``"blocks.3.self_attn"`` (for ``DiT.hooks``) or ``"high.blocks.3.self_attn"`` (``Session.hooks``).
    ``reduce`` gets q and k ``[B, S, heads, head_dim]`` (after RMSNorm and RoPE) at ``hook_k`` if ``wanted()`` was
    true when q went by. The hooks only look, and run eagerly inside compiled blocks.
    """
    held: dict[str, Tensor] = {}

    @torch.compiler.disable  # graph breaks here instead of tracing the hook (wclab.models.fast.speed_up)
    def hook(x: Tensor, point) -> None:
        if point.name.endswith("hook_q"):
            held.clear()
            if wanted():
                held["q"] = x
        elif "q" in held:
            reduce(held.pop("q"), x)

    return [(f"{m}.hook_{f}", hook) for m in modules for f in ("q", "k")]


class QueryRowMass:
    """Self-attention mass of selected query rows, grouped: float32 ``[G, S]``.

    ``mass(q, k, rows, selector, heads=None, chunk_elements=CHUNK_ELEMENTS, compile=None)`` takes q and k
    ``[B, S, H, D]`` (as at ``self_attn.hook_q`` / ``hook_k``), rows: int64 ``[U]`` query token indices, selector
    ``[G, U]`` (1 where query row u belongs to group g) and returns ``softmax(q[rows]·kᵀ/√D)`` over all S keys,
    summed over the batch, the selected ``heads`` (default all) and each group's rows, with q·kᵀ accumulated in
    float32 from q's and k's values.

    kernel: "fused" — :mod:`wclab.inspect.fused_row_mass`'s Triton kernels (row log-sum-exp, then the probabilities
    summed per group, no logits in memory; bf16/fp16 q and k); "torch" — float32 logits, at most
    ``chunk_elements`` at a time, through ``torch.compile`` when ``compile`` (default: on CUDA; eager with a
    warning if compiling fails); "auto" (default) — "fused" where Triton runs (CUDA) on bf16/fp16, else "torch".
    Both give the same numbers up to float32 summation order.
    """

    def __init__(self, kernel: Literal["auto", "fused", "torch"] = "auto") -> None:
        if kernel not in ("auto", "fused", "torch"):
            raise InspectError(f"kernel: expected 'auto', 'fused' or 'torch', got {kernel!r}")
        self.kernel = kernel
        self._run = CompiledOnce(_query_row_mass, "QueryRowMass")
        self._head_index: dict = {}  # (heads, device) -> int64 tensor, made once (no host copy per block)
        self._grouped: dict = {}  # id(selector) -> (rows, selector, GroupedRows on the device), made once

    def uses_fused(self, q: Tensor) -> bool:
        """Whether a call with this q takes the fused kernels."""
        half = q.dtype in (torch.bfloat16, torch.float16)
        if self.kernel == "fused":
            if not half or not fused_row_mass.available(q.device):
                raise InspectError(f"kernel='fused' needs bf16/fp16 q and k on a device Triton runs on; got "
                                   f"{q.dtype} on {q.device} (Triton importable: {fused_row_mass.importable()})")
            return True
        return self.kernel == "auto" and half and fused_row_mass.available(q.device)

    @torch.no_grad()
    def __call__(self, q: Tensor, k: Tensor, rows: Tensor, selector: Tensor, heads: Optional[Sequence[int]] = None,
                 chunk_elements: int = CHUNK_ELEMENTS, compile: Optional[bool] = None) -> Tensor:
        B, S, H, D = k.shape
        if heads is not None and list(heads) != list(range(H)):
            key = (tuple(heads), str(q.device))
            if key not in self._head_index:
                self._head_index[key] = torch.tensor(list(heads), device=q.device)
            index = self._head_index[key]
            q, k = q.index_select(2, index), k.index_select(2, index)
        if self.uses_fused(q):
            try:
                return fused_row_mass.group_mass(q, k, self._grouped_rows(rows, selector, q.device))
            except Exception as e:  # e.g. a Triton that cannot compile for this GPU
                if self.kernel == "fused":
                    raise
                warnings.warn(f"QueryRowMass: the fused kernels failed ({type(e).__name__}: {str(e)[:200]}); "
                              "float32 logits in chunks from now on")
                self.kernel = "torch"
        q = q.index_select(1, rows.to(q.device))
        head_chunk, row_chunk = chunk_sizes(q.shape[2], B, q.shape[1], S, chunk_elements)
        sel = selector.to(q.device, torch.float32)
        return self._run(q.is_cuda if compile is None else compile, bool(compile), q, k, sel, head_chunk, row_chunk)

    def _grouped_rows(self, rows: Tensor, selector: Tensor, device: torch.device) -> fused_row_mass.GroupedRows:
        """The rows laid out per group for the fused kernels, built once per selector (one host copy)."""
        cached = self._grouped.get(id(selector))
        if cached is None or cached[0] is not rows or cached[1] is not selector:
            cached = (rows, selector, fused_row_mass.GroupedRows.from_selector(rows, selector).to(device))
            self._grouped[id(selector)] = cached
        return cached[2]


def _query_row_mass(q: Tensor, k: Tensor, sel: Tensor, head_chunk: int, row_chunk: int) -> Tensor:
    """:class:`QueryRowMass` after row and head selection: q ``[B, U, h, D]``, k ``[B, S, h, D]``, sel ``[G, U]``."""
    B, U, h, D = q.shape
    S = k.shape[1]
    total = None
    for h0 in range(0, h, head_chunk):
        n = min(head_chunk, h - h0)
        kc = k[:, :, h0:h0 + n].transpose(1, 2).reshape(B * n, S, D)
        for u0 in range(0, U, row_chunk):
            c = min(row_chunk, U - u0)
            qc = q[:, u0:u0 + c, h0:h0 + n].transpose(1, 2).reshape(B * n, c, D)
            probs = (_qk_logits(qc, kc) * D ** -0.5).softmax(-1).view(B, n, c, S).sum((0, 1))  # [c, S]
            m = sel[:, u0:u0 + c] @ probs  # [G, S]
            total = m if total is None else total + m
    return total


# ------------------------------------------------------------------------------------------- the maps
class MotionMaps(HookRecorder):
    """Self-attention from each trajectory's path tokens onto every latent frame, averaged over blocks, heads,
    steps and experts (running sums, one float32 ``[T·F', S]`` per step).

    >>> with MotionMaps(session, trajectories=[0, 2], blocks=range(10, 30)) as maps:
    ...     session.run()
    >>> maps.map(0).shape        # [F'(query), F'(key), h/2, w/2]: mean attention of frame f's path tokens
    >>> maps.path_mass(0)        # [F', F']: mass from the path at frame f onto the path at frame g
    >>> maps.show(0, query_frame=2)

    trajectories: indices into ``session.scene.trajectories`` (default all). blocks, heads: indices (default all).
    steps: step indices (default all). expert: "high", "low", a list of them, or None (both). branches: "cond",
    "uncond" or both (default "cond"). queries: "visible" — a frame's query tokens are the trajectory's token-mask
    cells there (none where it is invisible); "path" — its path cells, visible or not (:func:`trajectory_token_mask`).
    kernel: how the query rows' probabilities are computed (:class:`QueryRowMass`; "auto": the fused Triton kernels
    on a GPU with a bf16/fp16 model, else float32 logits in chunks of ``chunk_elements``).
    """

    def __init__(self, session, trajectories: Optional[Iterable[int]] = None, blocks: Optional[Iterable[int]] = None,
                 heads: Optional[Iterable[int]] = None, steps: Optional[Iterable[int]] = None,
                 expert: Union[None, str, Iterable[str]] = None, branches: Union[str, Iterable[str]] = "cond",
                 queries: Drawn = "visible", chunk_elements: int = CHUNK_ELEMENTS,
                 kernel: Literal["auto", "fused", "torch"] = "auto"):
        experts = ["high", "low"] if expert is None else [expert] if isinstance(expert, str) else expert
        super().__init__(session, experts, branches, blocks, heads, steps, experts_field="expert")
        scene = session.scene
        n = len(scene.trajectories)
        self.trajectories = _checked(trajectories, list(range(n)), "trajectories", int)
        if queries not in ("visible", "path"):
            raise InspectError(f"queries: expected 'visible' or 'path', got {queries!r}")
        self.queries = queries
        self.chunk_elements = chunk_elements

        F = self.grid[0]
        self.query_masks = torch.from_numpy(np.stack([trajectory_token_mask(scene, t, queries)
                                                      for t in self.trajectories]))  # bool [T, F', h/2, w/2]
        self.path_masks = torch.from_numpy(np.stack([trajectory_token_mask(scene, t, "path")
                                                     for t in self.trajectories]))
        if tuple(self.query_masks.shape[1:]) != tuple(self.grid):
            raise InspectError(f"the scene's token grid {tuple(self.query_masks.shape[1:])} differs from the "
                               f"session's {self.grid}")
        flat = self.query_masks.reshape(len(self.trajectories), F, -1)  # [T, F', S] (only frame f's tokens set)
        rows_mask = flat.any(1).any(0)  # [S]
        self.rows = torch.nonzero(rows_mask).flatten()  # int64 [U] query tokens, all trajectories
        self.selector = flat.reshape(-1, flat.shape[-1])[:, self.rows].float()  # [T·F', U]
        self.queries_per_frame = self.selector.sum(1).reshape(len(self.trajectories), F)  # [T, F']
        self.sums: dict[int, Tensor] = {}  # step -> float32 [T·F', S]
        self.counts: dict[int, int] = {}  # step -> (forward, block, head) terms in the sum
        self._device_cache: dict = {}
        self._mass = QueryRowMass(kernel)

    def _hooks(self) -> list:
        modules = [f"{e}.blocks.{b}.self_attn" for e in self.experts for b in self.blocks]
        return self_attention_hooks(modules, self._accumulate, self._wanted)

    def _wanted(self) -> bool:
        return super()._wanted() and self.rows.numel() > 0

    def _accumulate(self, q: Tensor, k: Tensor) -> None:
        S = int(np.prod(self.grid))
        if q.shape[1] != S or k.shape[1] != S:
            raise InspectError(f"MotionMaps: self-attention saw {q.shape[1]} tokens, expected all {S} of grid "
                               f"{self.grid} (sequence parallelism hands each rank a slice; run on one device)")
        key = str(q.device)
        if key not in self._device_cache:
            self._device_cache[key] = (self.rows.to(q.device), self.selector.to(q.device))
        rows, sel = self._device_cache[key]
        mass = self._mass(q, k, rows, sel, self.heads, self.chunk_elements)
        step = current_hook_context().step
        self.sums[step] = self.sums[step] + mass if step in self.sums else mass
        self.counts[step] = self.counts.get(step, 0) + q.shape[0] * len(self.heads)

    # ------------------------------------------------------------------------------------------- results
    @property
    def recorded_steps(self) -> list[int]:
        return sorted(self.sums)

    def _index(self, trajectory: int) -> int:
        if int(trajectory) not in self.trajectories:
            raise InspectError(f"trajectory: expected one of the mapped trajectories {self.trajectories}, "
                               f"got {trajectory}")
        return self.trajectories.index(int(trajectory))

    def _raw(self, step: Optional[Union[int, Iterable[int]]]) -> tuple[Tensor, int]:
        if not self.sums:
            raise InspectError("no self-attention was recorded: run the session inside `with MotionMaps(...)`")
        steps = self.recorded_steps if step is None else [step] if isinstance(step, int) else list(step)
        missing = [i for i in steps if i not in self.sums]
        if missing:
            raise InspectError(f"step(s) {missing} were not recorded; recorded steps: {self.recorded_steps}")
        return sum(self.sums[i].cpu() for i in steps), sum(self.counts[i] for i in steps)

    def map(self, trajectory: int, step: Optional[Union[int, Iterable[int]]] = None) -> Tensor:
        """float32 ``[F'(query), F'(key), h/2, w/2]``: row f is the mean self-attention distribution of trajectory
        ``trajectory``'s query tokens in latent frame f over all video tokens (sums to 1 over keys), averaged over
        the recorded (forward, block, head) terms of ``step`` (an index, several, or None for all). NaN rows:
        frames without query tokens."""
        t = self._index(trajectory)
        raw, count = self._raw(step)
        F = self.grid[0]
        rows = raw[t * F:(t + 1) * F] / (count * self.queries_per_frame[t])[:, None]  # 0/0 -> NaN
        return rows.reshape(F, *self.grid)

    def path_mass(self, trajectory: int, step: Optional[Union[int, Iterable[int]]] = None) -> Tensor:
        """float32 ``[F'(query), F'(key)]``: of the attention of the path tokens at frame f (``map``), the share on
        the trajectory's own path cells at frame g (``path_masks``: drawn track, visible or not; 0 where frame g has
        no drawn point). NaN rows: query frames without query tokens."""
        t = self._index(trajectory)
        return (self.map(trajectory, step) * self.path_masks[t].float()[None]).sum((2, 3))

    def uniform_path_mass(self, trajectory: int) -> Tensor:
        """float32 ``[F']``: the share of frame g's path cells among all S tokens — what ``path_mass`` would be if
        attention were spread evenly."""
        t = self._index(trajectory)
        return self.path_masks[t].float().sum((1, 2)) / float(np.prod(self.grid))

    def to_frame(self, step: Optional[Union[int, Iterable[int]]] = None) -> pd.DataFrame:
        """Tidy table, one row per (trajectory, query frame, key frame): path mass, the uniform baseline, whether
        the trajectory is visible at the key frame (token mask drawn there), query tokens of the query frame."""
        out = []
        F = self.grid[0]
        f, g = np.meshgrid(np.arange(F), np.arange(F), indexing="ij")
        for n, t in enumerate(self.trajectories):
            visible = trajectory_token_mask(self.session.scene, t, "visible").any((1, 2))
            out.append(pd.DataFrame({
                "trajectory": t, "id": str(self.session.scene.trajectories[t].id), "query_frame": f.ravel(),
                "key_frame": g.ravel(), "offset": (g - f).ravel(), "path_mass": self.path_mass(t, step).numpy().ravel(),
                "uniform": np.tile(self.uniform_path_mass(t).numpy(), F), "key_visible": np.tile(visible, F),
                "query_tokens": np.repeat(self.queries_per_frame[n].numpy().astype(int), F)}))
        return pd.concat(out, ignore_index=True)

    # ------------------------------------------------------------------------------------------- display
    def video(self, trajectory: int, query_frame: int, step: Optional[Union[int, Iterable[int]]] = None,
              frames: Literal["latent", "video"] = "latent", alpha: float = 0.7, vmax: Optional[float] = None,
              draw_path: bool = True) -> np.ndarray:
        """``uint8 [F', H, W, 3]`` (frames="video": ``[T, H, W, 3]``): where trajectory ``trajectory``'s tokens at
        latent frame ``query_frame`` look in every latent frame — ``map(...)[query_frame]`` as a heatmap over the
        start image (one colour scale for all frames; vmax: default its maximum), with the trajectory drawn."""
        F = self.grid[0]
        if not -F <= int(query_frame) < F:
            raise InspectError(f"query_frame: expected a latent frame in 0..{F - 1}, got {query_frame}")
        heat = self.map(trajectory, step)[int(query_frame)]
        if torch.isnan(heat).any():
            raise InspectError(f"trajectory {trajectory} has no query tokens at latent frame {query_frame} "
                               f"(queries={self.queries!r}); frames with tokens: "
                               f"{np.flatnonzero(self.queries_per_frame[self._index(trajectory)].numpy()).tolist()}")
        video = heatmap_overlay(heat, self.session.image, alpha=alpha, vmax=vmax)
        scene = self.session.scene
        if draw_path:
            traj = scene.trajectories[int(trajectory)]
            video = overlay_trajectories(video, scene.replace(trajectories=[traj]))
        return expand_latent_frames(video, scene.frames) if frames == "video" else video

    def show(self, trajectory: int, query_frame: int, step: Optional[Union[int, Iterable[int]]] = None,
             fps: Optional[float] = None, **kwargs) -> np.ndarray:
        """Show :meth:`video` in the notebook (latent frames at ``fps``, default 4); returns the video."""
        video = self.video(trajectory, query_frame, step, **kwargs)
        title = f"trajectory {trajectory}: attention from latent frame {query_frame}"
        show_video(video, fps=fps or 4, title=title)
        return video

    def plot_path_mass(self, trajectory: int, step: Optional[Union[int, Iterable[int]]] = None, ax=None):
        """matplotlib Figure: :meth:`path_mass` as an image (query frame down, key frame across)."""
        import matplotlib.pyplot as plt

        fig, ax = (plt.subplots(figsize=(4.2, 3.6)) if ax is None else (ax.figure, ax))
        im = ax.imshow(self.path_mass(trajectory, step).numpy(), cmap="viridis", vmin=0)
        ax.set_xlabel("key latent frame g")
        ax.set_ylabel("query latent frame f")
        ax.set_title(f"trajectory {trajectory}: mass on its own path")
        fig.colorbar(im, ax=ax, fraction=0.046)
        return fig


__all__ = ["MotionMaps", "QueryRowMass", "self_attention_hooks", "trajectory_token_mask"]
