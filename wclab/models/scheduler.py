"""Flow-matching Euler scheduler as Wan2.2 / WorldCanvas samples with it.

Noise level ``sigma`` runs from 1 (pure noise) towards 0 (clean latents); the model predicts the velocity
``v = noise - x0``, so ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and one Euler step is
``x + v * (sigma_next - sigma)``. Timesteps are ``sigma * num_train_timesteps`` (float32).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence, Union

import torch

from ..errors import WclabError

Expert = Literal["high", "low"]
StepRef = Union[int, float, torch.Tensor]
"""A step: a Python ``int`` is a step index; a float or tensor is a timestep (nearest one is used)."""


class SchedulerError(WclabError, ValueError):
    """Bad scheduler settings (step count, strength, step index out of range)."""


@dataclass
class FlowMatchScheduler:
    """Flow-matching schedule with the settings WorldCanvas uses (shift 5, sigma_min 0, ``extra_one_step``).

    After ``set_timesteps(n)``: ``sigmas`` float32 [n], ``timesteps`` float32 [n] (= sigmas * 1000).
    """

    shift: float = 5.0
    num_train_timesteps: int = 1000
    sigma_min: float = 0.0
    sigma_max: float = 1.0
    extra_one_step: bool = True
    inverse_timesteps: bool = False
    reverse_sigmas: bool = False
    num_inference_steps: int = 50
    sigmas: torch.Tensor = field(init=False, repr=False, compare=False)
    timesteps: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.set_timesteps(self.num_inference_steps)

    def set_timesteps(self, steps: int, shift: float | None = None, denoising_strength: float = 1.0) -> None:
        """Build the schedule for ``steps`` sampling steps; ``shift`` (if given) replaces ``self.shift``."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise SchedulerError(f"steps: expected a positive int, got {steps!r}")
        if not 0.0 < denoising_strength <= 1.0:
            raise SchedulerError(f"denoising_strength: expected a value in (0, 1], got {denoising_strength!r}")
        if shift is not None:
            self.shift = shift
        self.num_inference_steps = steps
        start = self.sigma_min + (self.sigma_max - self.sigma_min) * denoising_strength
        if self.extra_one_step:  # n+1 points, drop the final sigma_min: the last step goes to 0 in `step`
            sigmas = torch.linspace(start, self.sigma_min, steps + 1)[:-1]
        else:
            sigmas = torch.linspace(start, self.sigma_min, steps)
        if self.inverse_timesteps:
            sigmas = torch.flip(sigmas, dims=[0])
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        if self.reverse_sigmas:
            sigmas = 1 - sigmas
        self.sigmas = sigmas
        self.timesteps = sigmas * self.num_train_timesteps

    def set_step_list(self, step_list: Sequence[int], shift: float | None = None) -> None:
        """A step-distilled schedule (the LightX2V recipes for Wan2.2): of the shifted 1000-point schedule
        ``shift·s / (1 + (shift-1)·s)``, ``s = 1 - i/1000``, keep the points ``i = 1000 - t`` for each training
        timestep ``t`` in ``step_list`` (strictly decreasing, in 1..1000), e.g. (1000, 750, 500, 250) -> sigmas
        1, 0.9375, 0.8333, 0.625 at shift 5. The last step lands on 0 as usual."""
        steps = [int(t) for t in step_list]
        if not steps or any(not 0 < t <= self.num_train_timesteps for t in steps) or \
                any(a <= b for a, b in zip(steps, steps[1:])):
            raise SchedulerError(f"step_list: expected strictly decreasing timesteps in 1..{self.num_train_timesteps}, "
                                 f"got {list(step_list)}")
        if shift is not None:
            self.shift = shift
        n = self.num_train_timesteps
        full = torch.linspace(self.sigma_max, self.sigma_min, n + 1)[:-1]
        full = self.shift * full / (1 + (self.shift - 1) * full)
        self.sigmas = full[[n - t for t in steps]]
        self.timesteps = self.sigmas * n
        self.num_inference_steps = len(steps)

    def index(self, step: StepRef) -> int:
        """Step index of ``step``: an int is taken as an index; a float/tensor timestep maps to the nearest one."""
        if isinstance(step, int) and not isinstance(step, bool):
            if not 0 <= step < len(self.timesteps):
                raise SchedulerError(f"step index: expected 0..{len(self.timesteps) - 1}, got {step}")
            return step
        if isinstance(step, torch.Tensor):
            step = step.detach().cpu()
        return int(torch.argmin((self.timesteps - step).abs()))

    def sigma(self, step: StepRef) -> torch.Tensor:
        """Noise level at ``step`` (0-dim float32 tensor)."""
        return self.sigmas[self.index(step)]

    def next_sigma(self, step: StepRef) -> Union[torch.Tensor, int]:
        """Noise level the Euler step from ``step`` lands on (the final step lands on 0, or 1 when inverted)."""
        i = self.index(step)
        if i + 1 < len(self.timesteps):
            return self.sigmas[i + 1]
        return 1 if (self.inverse_timesteps or self.reverse_sigmas) else 0

    def step(self, velocity: torch.Tensor, step: StepRef, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step: ``sample + velocity * (sigma_next - sigma)``; latents [B, 16, F', h, w] in, same out."""
        i = self.index(step)
        return sample + velocity * (self.next_sigma(i) - self.sigmas[i])

    def x0_from_velocity(self, sample: torch.Tensor, velocity: torch.Tensor, step: StepRef) -> torch.Tensor:
        """Predicted clean latents ``sample - sigma * velocity`` at ``step`` (same shape as ``sample``)."""
        return sample - self.sigma(step) * velocity

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, step: StepRef) -> torch.Tensor:
        """Latents at the noise level of ``step``: ``(1 - sigma) * clean + sigma * noise``."""
        sigma = self.sigma(step)
        return (1 - sigma) * clean + sigma * noise

    def expert_for(self, timestep: Union[float, torch.Tensor], boundary: float = 0.9) -> Expert:
        """Which Wan2.2 expert denoises ``timestep``: ``"high"`` while ``timestep >= boundary * num_train_timesteps``.

        The reference switches to the low-noise DiT once ``timestep < boundary * num_train_timesteps``.
        """
        t = timestep.item() if isinstance(timestep, torch.Tensor) else float(timestep)
        return "low" if t < boundary * self.num_train_timesteps else "high"
