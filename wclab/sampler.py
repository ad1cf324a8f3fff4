"""A steppable WorldCanvas denoising session, and one-shot generation on top of it.

``Session(models, scene, image, settings)`` prepares everything the loop needs (text embeddings, the image
condition ``y``, trajectory channels, cross-attention biases, start noise), then advances one flow-matching step at
a time. ``generate`` is ``Session(...).run()`` plus a decode, so stepping and one-shot generation are the same
computation and give bitwise the same result.

Shapes: latents ``[1, 16, F', h, w]`` with F' = (T-1)/4 + 1 latent frames, h = H/8, w = W/8 latent cells.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from wclab.conditions import Scene
from wclab.conditions.validate import check_model_size
from wclab.encode import BiasSpec, ConditionTensors, caption_spans, encode_conditions
from wclab.encode.bias import BETA
from wclab.errors import WclabError
from wclab.image import crop_and_resize, image_to_tensor, load_image
from wclab.models.conditioning import image_condition, latent_shape, make_noise
from wclab.models.hooks import ActivationCache, HookContext, hook_context
from wclab.models.scheduler import FlowMatchScheduler
from wclab.models.text_encoder import DEFAULT_NEGATIVE_PROMPT
from wclab.sizes import TILE_SIZE, TILE_STRIDE, VAE_STRIDE

Expert = Literal["high", "low"]
CfgBranch = Literal["cond", "uncond"]
NegativeBias = Literal["reference", "none"]
HookFn = Callable[..., Optional[torch.Tensor]]


UPDATABLE_SETTINGS = frozenset({"cfg", "beta", "boundary", "negative_bias", "point_mode", "record", "record_device",
                                "tiled", "tile_size", "tile_stride"})
"""The settings `Session.update` changes mid-run; any other change needs a fresh `Session`."""


class SessionError(WclabError, ValueError):
    """A session was asked for something its state cannot give (e.g. a step past the end)."""


@dataclass(frozen=True)
class Settings:
    """Sampling parameters. ``None`` sizes come from the scene.

    height, width: pixels (multiples of 16); frames: T (4k+1); steps: denoising steps; shift: flow-matching
    shift; cfg: classifier-free guidance scale (1 disables the negative branch); boundary: switch from the
    high- to the low-noise expert once timestep < boundary·1000; beta: cross-attention bias strength (1 = no
    bias); negative_bias: "reference" biases the negative branch like the released pipeline, "none" does not;
    point_mode: "point" | "mask" point-channel features; tiled: VAE tiling (None: tile when the latent grid is
    larger than one tile); record: per-step tensors to keep ("full", "latents" or "none"); step_list: the
    training timesteps of a step-distilled schedule (`FlowMatchScheduler.set_step_list`; ``steps`` must equal
    its length), None for the usual ``steps``-point schedule. `Settings.step_distilled()` is the 4-step preset.
    """

    height: Optional[int] = None
    width: Optional[int] = None
    frames: Optional[int] = None
    steps: int = 50
    shift: float = 5.0
    cfg: float = 5.0
    boundary: float = 0.9
    beta: float = BETA
    seed: int = 0
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    negative_bias: NegativeBias = "reference"
    point_mode: Literal["point", "mask"] = "point"
    tiled: Optional[bool] = None
    tile_size: tuple[int, int] = TILE_SIZE
    tile_stride: tuple[int, int] = TILE_STRIDE
    record: Literal["full", "latents", "none"] = "full"
    record_device: Optional[str] = "cpu"
    step_list: Optional[tuple[int, ...]] = None

    @classmethod
    def step_distilled(cls, **changes: Any) -> "Settings":
        """The step-distillation preset (LightX2V's Wan2.2-I2V-A14B 4-step LoRAs): timesteps 1000, 750, 500, 250
        of the shift-5 schedule, no negative branch (cfg 1); the 0.9 boundary gives the first two steps to the
        high-noise expert as the recipe does. ``changes`` override any field (e.g. ``seed``)."""
        return cls(steps=4, shift=5.0, cfg=1.0, step_list=(1000, 750, 500, 250)).replace(**changes)

    def replace(self, **changes: Any) -> "Settings":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise SessionError(f"unknown setting(s) {sorted(unknown)}; settings are "
                               f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StepRecord:
    """What one denoising step saw and produced (tensors ``[1, 16, F', h, w]``, on ``Settings.record_device``).

    latents: input of the step; cond / uncond: the expert's velocity for the prompt / negative prompt (uncond
    None when cfg == 1); velocity: CFG-combined; x0: predicted clean latents ``latents - sigma·velocity``;
    next_latents: output of the step.
    """

    index: int
    timestep: float
    sigma: float
    next_sigma: float
    expert: Expert
    latents: Optional[torch.Tensor]
    next_latents: Optional[torch.Tensor]
    cond: Optional[torch.Tensor] = None
    uncond: Optional[torch.Tensor] = None
    velocity: Optional[torch.Tensor] = None
    x0: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class TextCondition:
    """What one CFG branch feeds the DiT's cross-attention (read-only; `Session.text_condition`).

    text: the prompt as given (before the tokenizer's cleaning); context: its embedding ``[1, L_text, text_dim]``;
    spans: ``((s0, s1), ...)`` text-token ranges of the prompt's caption lines, in caption order (on the
    "uncond" branch: the negative prompt's); bias_spec / bias: the cross-attention bias (``bias``
    ``[1, 1, S_video, L_text]``), None where the branch has none.
    """

    text: str
    context: torch.Tensor
    spans: tuple[tuple[int, int], ...]
    bias_spec: Optional[BiasSpec] = None
    bias: Optional[torch.Tensor] = None


class Session:
    """A denoising run you can pause, inspect, edit and branch.

    >>> s = Session(models, scene, "start.png", Settings(steps=50, seed=0))
    >>> s.step()                       # one step; s.history[-1] is its StepRecord
    >>> s.run(until=20)                # steps until 20 steps are done
    >>> s2 = s.branch(); s2.update(cfg=3.0); s2.run()
    >>> with s.hooks([("blocks.3.hook_out", lambda x, hook: print(hook.ctx.step, hook.ctx.branch))]):
    ...     s.step()                   # hooks fire for s only (not for branches), read their HookContext
    >>> video = s.run().decode()       # uint8 [T, H, W, 3]
    """

    def __init__(self, models, scene: Scene, image: Union[str, Image.Image, np.ndarray, torch.Tensor],
                 settings: Optional[Settings] = None, progress: bool = True, **overrides: Any):
        settings = (settings or Settings()).replace(**overrides)
        settings = settings.replace(height=settings.height or scene.height, width=settings.width or scene.width,
                                    frames=settings.frames or scene.frames)
        if (settings.height, settings.width, settings.frames) != (scene.height, scene.width, scene.frames):
            raise SessionError(
                f"settings size {settings.height}x{settings.width}x{settings.frames} (HxWxT) differs from the "
                f"scene's {scene.height}x{scene.width}x{scene.frames}; resize the scene first")
        check_model_size(scene)
        self.models = models
        self.settings = settings
        self.progress = progress
        self.scheduler = FlowMatchScheduler(shift=settings.shift)
        if settings.step_list is None:
            self.scheduler.set_timesteps(settings.steps, shift=settings.shift)
        elif len(settings.step_list) != settings.steps:
            raise SessionError(f"step_list has {len(settings.step_list)} timesteps but steps is {settings.steps}")
        else:
            self.scheduler.set_step_list(settings.step_list, shift=settings.shift)
        self._fwd_hooks: list[tuple[str, HookFn]] = []
        # the CFG branch of the forward running now; kept for old code, hooks read ``hook.ctx.branch`` instead
        self.current_branch: CfgBranch = "cond"

        self.image = _as_image(image, settings.height, settings.width)  # PIL, H x W
        image_tensor = image_to_tensor(self.image).to(models.device, models.dtype)
        with torch.no_grad():
            self.y, self.first_frame_latents = image_condition(
                models.vae, image_tensor, settings.frames, tiled=self._tiled(), tile_size=settings.tile_size,
                tile_stride=settings.tile_stride)
        self.negative = self._encode_text(settings.negative_prompt)
        self.positive: Optional[TextCondition] = None
        self._set_scene(scene)
        self.noise = make_noise(latent_shape(settings.height, settings.width, settings.frames), settings.seed,
                                device=models.device, dtype=models.dtype)
        self.latents: torch.Tensor = self.noise
        self.step_index = 0
        self.history: list[StepRecord] = []

    # ------------------------------------------------------------------------------------------- preparation
    def _tiled(self) -> bool:
        s = self.settings
        if s.tiled is not None:
            return s.tiled
        return s.height // VAE_STRIDE > s.tile_size[0] or s.width // VAE_STRIDE > s.tile_size[1]

    def _encode_text(self, text: str) -> TextCondition:
        tok = self.models.tokenizer
        ids, mask = tok(text)
        with torch.no_grad():
            context = self.models.text_encoder(ids, mask).to(self.models.device, self.models.dtype)
        spans = caption_spans(text, tok, tok.text_len)
        return TextCondition(text=text, context=context, spans=tuple(tuple(sp) for sp in spans))

    def _set_scene(self, scene: Scene) -> None:
        self.scene = scene
        self.conditions: ConditionTensors = encode_conditions(
            scene, self.first_frame_latents.float(), point_mode=self.settings.point_mode)
        prompt = self.conditions.prompt.text
        if self.positive is None or self.positive.text != prompt:  # captions changed: encode the new prompt
            self.positive = self._encode_text(prompt)
        self._channels = self.conditions.dit_channels().to(self.models.device, self.models.dtype)
        self._build_biases()

    def _build_biases(self) -> None:
        s, c, dev, dt = self.settings, self.conditions, self.models.device, self.models.dtype
        text_len = self.positive.context.shape[1]
        spec = BiasSpec.from_token_masks(c.token_masks, c.caption_order, list(self.positive.spans), s.beta)
        self.positive = dataclasses.replace(self.positive, bias_spec=spec, bias=spec.dense(text_len, dt, dev))
        if s.negative_bias == "reference":
            spec = BiasSpec.negative(c.token_masks, c.caption_order, list(self.negative.spans), s.beta)
            self.negative = dataclasses.replace(self.negative, bias_spec=spec, bias=spec.dense(text_len, dt, dev))
        elif s.negative_bias == "none":
            self.negative = dataclasses.replace(self.negative, bias_spec=None, bias=None)
        else:
            raise SessionError(f"negative_bias: expected 'reference' or 'none', got {s.negative_bias!r}")

    # ------------------------------------------------------------------------------------------- state
    @property
    def num_steps(self) -> int:
        return len(self.scheduler.timesteps)

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    @property
    def timestep(self) -> float:
        """Timestep (0..1000) of the next step."""
        self._check_not_done()
        return float(self.scheduler.timesteps[self.step_index])

    @property
    def sigma(self) -> float:
        self._check_not_done()
        return float(self.scheduler.sigmas[self.step_index])

    @property
    def expert(self) -> Expert:
        """The expert the next step uses."""
        return self.scheduler.expert_for(self.timestep, self.settings.boundary)

    def text_condition(self, branch: CfgBranch = "cond") -> TextCondition:
        """The prompt ("cond") or negative prompt ("uncond") as the DiT sees it: text, embedding, caption
        spans and bias (the current ones: `set_scene` / `update` replace them)."""
        if branch == "cond":
            return self.positive
        if branch == "uncond":
            return self.negative
        raise SessionError(f"branch: expected 'cond' or 'uncond', got {branch!r}")

    def caption_spans(self, branch: CfgBranch = "cond") -> tuple[tuple[int, int], ...]:
        """``((s0, s1), ...)``: text-token ranges of the captions on a CFG branch, in caption order (object
        ``k = conditions.caption_order[id]`` owns span k). On "uncond" these are the negative prompt's spans,
        which the reference's negative bias binds to objects in caption order (usually one span)."""
        return self.text_condition(branch).spans

    def dit(self, expert: Expert):
        return self.models.high if expert == "high" else self.models.low

    def model_input(self, latents: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[1, 53, F', h, w]``: latents 16 + y 20 + gaussian 1 + point 16."""
        latents = self.latents if latents is None else latents
        return torch.cat([latents, self.y, self._channels], dim=1)

    def _check_not_done(self) -> None:
        if self.done:
            raise SessionError(f"the session has run all {self.num_steps} steps")

    # ------------------------------------------------------------------------------------------- stepping
    @torch.no_grad()
    def predict(self, latents: Optional[torch.Tensor] = None, step: Optional[int] = None
                ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """``(cond, uncond, velocity)`` of the expert at ``step`` (default: the next step) — no state change.

        Each DiT forward runs with its `HookContext` (``hook.ctx`` in hooks): this session, ``step``, its
        timestep, sigma and expert, and the CFG branch it computes (under CFG parallelism: this rank's)."""
        step = self.step_index if step is None else step
        t, sigma = float(self.scheduler.timesteps[step]), float(self.scheduler.sigmas[step])
        expert = self.scheduler.expert_for(t, self.settings.boundary)
        dit = self.dit(expert)
        x = self.model_input(latents)
        timestep = torch.tensor([t], device=x.device, dtype=x.dtype)

        def forward(branch: CfgBranch) -> torch.Tensor:
            self.current_branch = branch
            text = self.text_condition(branch)
            with hook_context(HookContext(step, t, sigma, expert, branch, self)):
                return dit(x, timestep, text.context, text.bias)

        split = getattr(dit, "cfg_branch", None)  # CFG parallelism: this rank computes one branch only
        with self._hooks_on(dit):
            if self.settings.cfg == 1.0:
                cond = forward("cond")
                return cond, None, cond
            if split is None:
                cond, uncond = forward("cond"), forward("uncond")
            else:
                cond, uncond = dit.join_cfg(forward(split))
        return cond, uncond, uncond + self.settings.cfg * (cond - uncond)

    @torch.no_grad()
    def step(self) -> StepRecord:
        """Run one denoising step; returns (and appends to ``history``) its :class:`StepRecord`."""
        self._check_not_done()
        i = self.step_index
        t, sigma = float(self.scheduler.timesteps[i]), float(self.scheduler.sigmas[i])
        expert = self.scheduler.expert_for(t, self.settings.boundary)
        cond, uncond, velocity = self.predict(step=i)
        latents = self.latents
        next_latents = self.scheduler.step(velocity, i, latents)
        record = self._record(i, t, sigma, expert, latents, next_latents, cond, uncond, velocity)
        self.latents = next_latents
        self.step_index += 1
        self.history.append(record)
        return record

    def _record(self, i, t, sigma, expert, latents, next_latents, cond, uncond, velocity) -> StepRecord:
        mode, dev = self.settings.record, self.settings.record_device
        keep = (lambda x: None if x is None else x.to(dev)) if dev else (lambda x: x)
        next_sigma = float(self.scheduler.next_sigma(i))
        if mode == "none":
            return StepRecord(i, t, sigma, next_sigma, expert, None, None)
        if mode == "latents":
            return StepRecord(i, t, sigma, next_sigma, expert, keep(latents), keep(next_latents))
        x0 = self.scheduler.x0_from_velocity(latents, velocity, i)
        return StepRecord(i, t, sigma, next_sigma, expert, keep(latents), keep(next_latents), keep(cond),
                          keep(uncond), keep(velocity), keep(x0))

    def run(self, until: Optional[int] = None,
            callback_on_step_end: Optional[Callable[["Session", StepRecord], None]] = None) -> "Session":
        """Step until ``until`` steps are done (default: all). ``callback_on_step_end(session, record)`` runs after
        each step (it may edit the session, e.g. ``session.latents`` or ``session.update(...)``)."""
        until = self.num_steps if until is None else until
        if not 0 <= until <= self.num_steps:
            raise SessionError(f"until: expected 0..{self.num_steps}, got {until}")
        n = max(until - self.step_index, 0)
        for _ in tqdm(range(n), desc="denoising", disable=not self.progress or n == 0, leave=False):
            record = self.step()
            if callback_on_step_end is not None:
                callback_on_step_end(self, record)
        return self

    # ------------------------------------------------------------------------------------------- interventions
    def set_latents(self, latents: torch.Tensor) -> None:
        """Replace the current latents (same shape) before the next step."""
        if tuple(latents.shape) != tuple(self.latents.shape):
            raise SessionError(f"latents: expected shape {list(self.latents.shape)}, got {list(latents.shape)}")
        self.latents = latents.to(self.latents.device, self.latents.dtype)

    def set_scene(self, scene: Scene) -> None:
        """Use another scene (same size) from the next step on: re-encodes channels, prompt and biases."""
        if scene.size != self.scene.size:
            raise SessionError(f"scene size {scene.size} differs from the session's {self.scene.size} (H, W, T)")
        self._set_scene(scene)

    def update(self, **changes: Any) -> None:
        """Change settings that may change mid-run: ``cfg``, ``beta``, ``boundary``, ``negative_bias``,
        ``point_mode``, ``record``, ``record_device``, tiling of decodes."""
        fixed = set(changes) - UPDATABLE_SETTINGS
        if fixed:
            raise SessionError(f"cannot change {sorted(fixed)} mid-run (start a new Session); "
                               f"changeable: {sorted(UPDATABLE_SETTINGS)}")
        old = self.settings
        self.settings = old.replace(**changes)
        if self.settings.point_mode != old.point_mode:
            self._set_scene(self.scene)
        elif (self.settings.beta, self.settings.negative_bias) != (old.beta, old.negative_bias):
            self._build_biases()

    def branch(self) -> "Session":
        """A copy that shares everything computed so far (tensors are never modified in place) and then goes
        its own way: stepping, edits and hooks of one do not affect the other.

        The branch starts without hooks: hooks attached with ``with s.hooks(...)`` (and `AttentionMaps` on
        ``s``) belong to ``s`` alone, also for a branch made inside that block; attach hooks to the branch with
        its own ``with b.hooks(...)``."""
        other = copy.copy(self)
        other.history = list(self.history)
        other._fwd_hooks = []
        other.scheduler = copy.deepcopy(self.scheduler)
        return other

    # ------------------------------------------------------------------------------------------- hooks
    def hook_names(self) -> list[str]:
        """Every hook point as ``high.<name>`` / ``low.<name>``."""
        return [f"{e}.{n}" for e in ("high", "low") for n in self.dit(e).hook_points()]

    def _split(self, name: str) -> tuple[tuple[Expert, ...], str]:
        head, _, rest = name.partition(".")
        if head in ("high", "low"):
            return (head,), rest
        return ("high", "low"), name

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]] = ()) -> Iterator["Session"]:
        """Attach ``(name, fn)`` hooks to this session's forwards while the block runs. ``name`` is
        ``high.<hook>``, ``low.<hook>`` or a bare ``<hook>`` for both experts; ``fn(tensor, hook)`` may return a
        replacement tensor. The hooks fire for this session only: a branch made inside the block does not get
        them (see :meth:`branch`), and they are gone when the block closes."""
        added = list(fwd_hooks)
        for name, _ in added:  # validate now, so a typo fails before any compute
            experts, rest = self._split(name)
            for e in experts:
                self.dit(e).resolve_hook_points(rest)
        self._fwd_hooks.extend(added)
        try:
            yield self
        finally:
            for h in added:
                self._fwd_hooks.remove(h)

    @contextmanager
    def _hooks_on(self, dit) -> Iterator[None]:
        expert = "high" if dit is self.models.high else "low"
        with ExitStack() as stack:
            pairs = []
            for name, fn in self._fwd_hooks:
                experts, rest = self._split(name)
                if expert in experts:
                    pairs.append((rest, fn))
            if pairs:
                stack.enter_context(dit.hooks(pairs))
            yield

    def run_with_cache(self, names: Union[str, Iterable[str], Callable[[str], bool]], until: Optional[int] = None,
                       device: Optional[str] = "cpu", branch: Literal["cond", "uncond", "both"] = "both"
                       ) -> ActivationCache:
        """Run steps (like :meth:`run`) caching the named activations of every forward.

        ``names``: a hook name (``high.<hook>``, ``low.<hook>``, or a bare ``<hook>`` for both experts), a list
        of them, or a predicate on the bare hook name. Keys are ``step{i}.{cond|uncond}.{high|low}.<hook>``;
        only the named activations are kept, detached and moved to ``device`` (None: left where they are).
        """
        store: dict[str, torch.Tensor] = {}

        def make(expert: Expert, bare: str) -> HookFn:
            def fn(x, hook):
                ctx = hook.ctx
                if branch in ("both", ctx.branch):
                    x = x.detach()
                    store[f"step{ctx.step}.{ctx.branch}.{expert}.{bare}"] = x.to(device) if device else x
                return None
            return fn

        if callable(names):
            selected = [(f"{e}.{n}", make(e, n)) for e in ("high", "low") for n in self.dit(e).hook_points()
                        if names(n)]
            if not selected:
                raise SessionError("run_with_cache: the names predicate matched no hook point (see hook_names())")
        else:
            selected = []
            for name in [names] if isinstance(names, str) else list(names):
                experts, bare = self._split(name)
                selected += [(f"{e}.{bare}", make(e, bare)) for e in experts]
        with self.hooks(selected):
            self.run(until=until)
        return ActivationCache(store)

    # ------------------------------------------------------------------------------------------- outputs
    def x0(self, step: int = -1) -> torch.Tensor:
        """Predicted clean latents of a recorded step (``record="full"``)."""
        if not self.history:
            raise SessionError("no step has run yet")
        rec = self.history[step]
        if rec.x0 is None:
            raise SessionError("x0 was not recorded (Settings.record must be 'full')")
        return rec.x0

    @torch.no_grad()
    def decode(self, latents: Optional[torch.Tensor] = None) -> np.ndarray:
        """Exact VAE decode to ``uint8 [T, H, W, 3]`` (default: the current latents)."""
        latents = self.latents if latents is None else latents
        s = self.settings
        video = self.models.vae.decode(latents.to(self.models.device, self.models.dtype), tiled=self._tiled(),
                                       tile_size=s.tile_size, tile_stride=s.tile_stride)
        return np.asarray(self.models.vae.to_uint8(video))

    def preview(self, latents: Optional[torch.Tensor] = None, upsample: bool = True) -> np.ndarray:
        """Cheap RGB preview ``uint8 [F', H, W, 3]`` (or latent-grid size) of latents — by default the last
        step's x0 prediction — through the models' latent→RGB projection."""
        if latents is None:
            latents = self.x0() if self.history and self.history[-1].x0 is not None else self.latents
        if self.models.preview is None:
            raise SessionError("these models have no latent preview (Models.preview is None)")
        frames = self.models.preview(latents.float().cpu(), upscale=8 if upsample else 1)
        return np.asarray(frames)


@dataclass
class GenerationResult:
    """video: ``uint8 [T, H, W, 3]``; latents: final ``[1, 16, F', h, w]``; session: the finished session."""

    video: np.ndarray
    latents: torch.Tensor
    session: Session = field(repr=False)


def generate(models, scene: Scene, image, settings: Optional[Settings] = None, progress: bool = True,
             **overrides: Any) -> GenerationResult:
    """One-shot generation: ``Session(...).run()`` then an exact decode."""
    session = Session(models, scene, image, settings, progress=progress, **overrides).run()
    return GenerationResult(video=session.decode(), latents=session.latents, session=session)


def _as_image(image, height: int, width: int) -> Image.Image:
    if isinstance(image, str) or hasattr(image, "__fspath__"):
        image = load_image(image)
    elif isinstance(image, torch.Tensor):
        image = Image.fromarray(image.detach().cpu().numpy().astype(np.uint8))
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise SessionError(f"image: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise SessionError(f"image: expected a path, PIL image or uint8 [H, W, 3] array, got {type(image).__name__}")
    return crop_and_resize(image.convert("RGB"), height, width)
