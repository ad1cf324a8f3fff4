"""A notebook drives several GPUs: worker processes hold the experts and run each DiT forward with the notebook.

    models = load_models("checkpoints/", device="cuda:0", dtype=torch.bfloat16)
    with start_workers(models, 4) as workers:          # the notebook is rank 0 (cuda:0), 3 workers on cuda:1..3
        s = Session(workers.models, scene, image, Settings(steps=50))
        with AttentionMaps(s, words=True) as maps:     # hooks see all tokens: the maps equal one process's
            s.run()
        video = s.decode()                             # text encoder, VAE, branch, update: the notebook's own

How: the notebook process is rank 0 of a ``torch.distributed`` process group (NCCL on GPUs, gloo on CPU) whose
other ranks are ``torch.multiprocessing`` spawn processes started by `start_workers`. Each worker loads the two
experts from the same checkpoint files (``models.paths``; no text encoder or VAE) onto its own device and waits.
``workers.models`` is the notebook's `Models` with both experts replaced by `WorkerDiT`: each of its forwards
broadcasts a command (which expert, the input shapes, the names of the hook points that have hooks) to the
workers, then the input tensors, and then every rank runs `wclab.parallel.ParallelDiT.forward` on its slice of the
video tokens; every rank gets the full output. Nothing else is distributed, so `Session.branch`, ``update``,
``decode`` and ``preview`` run unchanged in the notebook.

Hooks run only in the notebook, on full tensors: at each hook point that has hooks, the ranks all-gather the
token slices (`wclab.parallel.gather_tokens`; text-side and modulation tensors are whole on every rank already),
the notebook runs the hooks on the whole ``[B, S, ...]`` tensor, exactly as in one process, and broadcasts a
replacement, if a hook returned one, for every rank to take its slice of. So hooks see their ``hook.ctx``
(`wclab.models.hooks.HookContext`) and the notebook's objects as usual, ``Session.run_with_cache`` caches whole
tensors, and `wclab.inspect.AttentionMaps` gets complete ``[R, S]`` sums (do not call ``gather_attention_maps``
on them). A hook that raises stops the forward on every rank in step; the workers stay usable.

Transport (all PyTorch): a ``TCPStore`` hosted by the notebook (start-up progress and worker tracebacks); a gloo
group without a deadline that carries each command header (``broadcast_object_list``: an idle worker waits for
the next command as long as the notebook lives); the default group (NCCL/gloo, ``timeout``) for the tensors and
`ParallelDiT`'s collectives. A worker that dies, or a forward interrupted mid-way (Ctrl-C), ends the group with a
`WorkerError` naming the worker, its exit code and its traceback; start new workers after that. A watcher thread
aborts the default group the moment a worker process exits, so that a collective waiting for it (NCCL waits on
the GPU) ends instead of hanging.

Limits: inference only (no autograd through the workers); one group per process; workers load the experts from files
as `load_models` did (its ``experts=`` placement, e.g. "fp8", and its ``lora=`` files are mirrored), so weights
edited in the notebook after loading are not (a checksum of weights and buffers at start-up catches edits made
before); each hooked point costs one all-gather of its tensor per forward (plus an 8-byte flag broadcast); a hook's
replacement must keep the tensor's shape. Tested on CPU with gloo (tests/test_workers.py); on GPUs run ``python
tests/test_workers.py --cuda OUT``.
"""
from __future__ import annotations

import atexit
import dataclasses
import math
import os
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import wait as wait_for_any
from typing import Any, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor

from wclab.errors import WclabError
from wclab.models.dit import DiT
from wclab.models.hooks import HookedModule, HookPoint
from wclab.models.loading import Models, load_expert

KEY = "wclab_workers"  # prefix of this module's keys in the TCPStore
IDLE_TIMEOUT = timedelta(days=365)  # a worker waits this long for the next command (the notebook may think)
POLL_S = 0.05
_SAME, _REPLACED, _ABORT = 0, 1, 2  # what the notebook's hooks did at a hook point


class WorkerError(WclabError, RuntimeError):
    """A worker process failed to start, died, or the workers fell out of step; the message names the worker."""


class _Aborted(Exception):
    """Raised on a worker when a hook in the notebook raised: the forward stops on every rank."""


# ---------------------------------------------------------------- hook points: whole on every rank, or token slices

def token_dim(hook_name: str) -> Optional[int]:
    """Dimension along which `ParallelDiT` splits the video tokens of the tensor at ``hook_name`` (a DiT hook point
    name, e.g. ``"blocks.3.cross_attn.hook_bias"`` -> 2), or None where every rank holds the whole tensor
    (``hook_embed``, ``hook_head_out``, ``blocks.N.hook_mod``, ``cross_attn.hook_k`` / ``hook_v``: text side)."""
    if not hook_name.startswith("blocks."):
        return None
    leaf = hook_name.rpartition(".")[2]
    if leaf == "hook_mod":
        return None
    if ".cross_attn." in hook_name:
        if leaf in ("hook_k", "hook_v"):
            return None
        if leaf in ("hook_bias", "hook_logits", "hook_probs"):  # [B, 1 | heads, S, L]
            return 2
    return 1  # [B, S, ...]


class _Relay:
    """Runs the notebook's hooks on whole tensors during one distributed forward (all ranks use one).

    On entry, every listed hook point gets one relay hook instead of its own (restored on exit). At each firing
    the ranks all-gather token-split tensors; rank 0 runs the saved hooks, then broadcasts a flag (same /
    replaced / abort) and any replacement, and each rank continues with its own slice.
    """

    def __init__(self, dit: DiT, names: Sequence[str], num_tokens: int, mesh, device: torch.device, rank: int):
        self.points = [dit.hook_points()[n] for n in names]
        self.num_tokens, self.mesh, self.device, self.rank = num_tokens, mesh, device, rank
        self.saved: dict[str, list] = {}
        self.aborted = False  # rank 0: a hook raised and the workers were told

    def __enter__(self) -> "_Relay":
        for hp in self.points:
            self.saved[hp.name] = list(hp._hooks)
            hp.remove_hooks()
            hp.add_hook(self._relay)
        return self

    def __exit__(self, *exc) -> None:
        for hp in self.points:
            hp.remove_hooks()
            for fn in self.saved.get(hp.name, []):
                hp.add_hook(fn)

    def _flag(self, value: int = 0) -> int:
        """Rank 0 sends ``value``; the workers receive it (rank 0 does not wait for the GPU here)."""
        flag = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(flag, src=0)
        return value if self.rank == 0 else int(flag.item())

    def _relay(self, x: Tensor, hp: HookPoint) -> Optional[Tensor]:
        from wclab.parallel import gather_tokens, token_slice

        dim = token_dim(hp.name)
        full = x if dim is None else gather_tokens(x, self.num_tokens, dim=dim, mesh=self.mesh)
        if self.rank == 0:
            y = self._run_hooks(full, hp)
            replaced = y is not full
            self._flag(_REPLACED if replaced else _SAME)
            if not replaced:
                return None
            spec = [(tuple(y.shape), y.dtype)]
            dist.broadcast_object_list(spec, src=0, device=self.device if self.device.type == "cuda" else None)
            dist.broadcast(y, src=0)
        else:
            flag = self._flag()
            if flag == _ABORT:
                raise _Aborted()
            if flag == _SAME:
                return None
            spec: list[Any] = [None]
            dist.broadcast_object_list(spec, src=0, device=self.device if self.device.type == "cuda" else None)
            y = torch.empty(spec[0][0], dtype=spec[0][1], device=self.device)
            dist.broadcast(y, src=0)
        return y if dim is None else y.narrow(dim, (s := token_slice(self.num_tokens, self.mesh)).start,
                                              s.stop - s.start)

    def _run_hooks(self, full: Tensor, hp: HookPoint) -> Tensor:
        """Rank 0: the saved hooks on the whole tensor, as `HookPoint.forward` runs them; a raising hook or a
        replacement of the wrong shape stops every rank (flag _ABORT) and raises here."""
        from wclab.errors import HookError

        y = full
        try:
            for fn in self.saved[hp.name]:
                out = fn(y, hp)
                if out is not None:
                    if not isinstance(out, Tensor):
                        raise HookError(f"hook on {hp.name!r} returned {type(out).__name__}; return a Tensor or None")
                    y = out
            if y is not full:
                if tuple(y.shape) != tuple(full.shape):
                    raise HookError(f"hook on {hp.name!r} returned shape {list(y.shape)}; under workers a "
                                    f"replacement must keep the shape {list(full.shape)}")
                y = y.to(self.device).contiguous()
        except BaseException:
            self.aborted = True
            self._flag(_ABORT)
            raise
        return y


# ---------------------------------------------------------------- the notebook's side

class WorkerDiT(HookedModule):
    """One expert in the notebook (rank 0) whose forward runs on all ranks of a `Workers` group.

    ``forward(x [B, in_dim, F, H, W], timestep [B], context [B, L, text_dim], bias [B, 1, S, L] | None)
    -> [B, out_dim, F, H, W]``, the wrapped `DiT`'s call and result (up to float rounding), without autograd.
    Hook points, ``cfg``, ``token_grid``... are the wrapped model's; hooks see whole tensors (module docstring).
    """

    def __init__(self, workers: "Workers", expert: str, parallel):
        super().__init__()
        self.parallel = parallel  # ParallelDiT over the group's mesh
        self._workers = workers
        self.expert = expert
        self._hook_points = parallel.model.hook_points()

    @property
    def model(self) -> DiT:
        return self.parallel.model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (self.parallel)
        except AttributeError:
            if name in ("parallel", "_workers"):
                raise
            return getattr(self.parallel.model, name)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        return self._workers._forward(self.expert, x, timestep, context, bias)


class Workers:
    """Worker processes started by `start_workers`, in lockstep with this (the notebook's) process, rank 0.

    ``models``: the notebook's `Models` with `WorkerDiT` experts (pass it to `Session`). ``world_size``: ranks,
    the notebook included; ``devices``: each rank's device; ``pids``: the worker processes. ``close()`` (also on
    leaving a ``with`` block and at interpreter exit) stops the workers and the process group.
    """

    def __init__(self, models: "Models", devices: list[torch.device], procs: list, store, control, mesh):
        from wclab.parallel import ParallelDiT

        self.devices, self._procs, self._store, self._control, self._mesh = devices, procs, store, control, mesh
        self.world_size = len(devices)
        self.device = devices[0]
        self._error: Optional[str] = None
        self._closed = False
        self._lock = threading.Lock()  # close() vs the watcher
        threading.Thread(target=self._watch, name="wclab-workers-watch", daemon=True).start()
        self.local_models = models
        self.models = dataclasses.replace(
            models, high=WorkerDiT(self, "high", ParallelDiT(models.high, mesh)),
            low=WorkerDiT(self, "low", ParallelDiT(models.low, mesh)))
        atexit.register(self.close)

    # ------------------------------------------------------------------ state
    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def alive(self) -> bool:
        """True while the group can run forwards."""
        return not self._closed and self._error is None and all(p.is_alive() for p in self._procs)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._error else "running"
        return f"Workers({self.world_size} ranks on {[str(d) for d in self.devices]}, {state})"

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _watch(self) -> None:
        """Thread: the moment a worker process exits while the group is open, abort the default process group.
        A collective waiting for the dead rank then ends: gloo's fail at once anyway, NCCL's would wait on the
        GPU for the collective timeout (and a notebook thread that queued kernels behind it would block) -- after
        the abort they fail or return, and the forward raises a `WorkerError` naming the worker."""
        wait_for_any([p.sentinel for p in self._procs])
        with self._lock:
            if self._closed:
                return
            try:
                dist.group.WORLD.abort()
            except Exception:  # already destroyed, or a backend without abort
                pass

    def _dead_workers(self) -> str:
        """A description of every worker that has exited, with its reported traceback (or "")."""
        lines = []
        for rank, p in enumerate(self._procs, start=1):
            if not p.is_alive():
                lines.append(f"worker {rank} (pid {p.pid}, {self.devices[rank]}) exited with code {p.exitcode}"
                             + _reported_error(self._store, rank))
        return "\n".join(lines)

    def _check(self) -> None:
        if self._closed:
            raise WorkerError("these workers are closed: start new ones with wclab.workers.start_workers(models, n)")
        if self._error is None:
            dead = self._dead_workers()
            if dead:
                self._fail(dead)
        if self._error is not None:
            raise WorkerError(f"the workers stopped: {self._error}\nclose() them and start new ones with "
                              "wclab.workers.start_workers(models, n)")

    def _fail(self, reason: str) -> None:
        """Mark the group broken (its ranks are out of step or gone) and stop the workers."""
        self._error = reason
        _stop(self._procs, grace_s=0.0)

    # ------------------------------------------------------------------ one forward
    def _forward(self, expert: str, x: Tensor, timestep: Tensor, context: Tensor, bias: Optional[Tensor]) -> Tensor:
        self._check()
        parallel = self.models.high.parallel if expert == "high" else self.models.low.parallel
        dit = parallel.model
        tensors = [t.detach().to(self.device).contiguous() if t is not None else None
                   for t in (x, timestep, context, bias)]
        hooks = [name for name, hp in dit.hook_points().items() if hp.active]
        header = {"op": "forward", "expert": expert, "hooks": hooks,
                  "tensors": [None if t is None else (tuple(t.shape), t.dtype) for t in tensors]}
        relay = _Relay(dit, hooks, math.prod(dit.token_grid(tensors[0].shape)), self._mesh, self.device, 0)
        try:
            dist.broadcast_object_list([header], src=0, group=self._control)
            for t in tensors:
                if t is not None:
                    dist.broadcast(t, src=0)
            with torch.no_grad(), relay:
                out = parallel(*tensors)
        except WclabError:
            raise  # input checks fail alike on every rank, before any collective: still in step
        except BaseException as e:
            if relay.aborted:
                raise  # a hook raised; every rank stopped at the same hook point
            dead = self._dead_workers()
            self._fail(dead or f"a forward of the {expert!r} expert was interrupted by {type(e).__name__}: {e}")
            raise WorkerError(f"the distributed forward failed ({type(e).__name__}: {e})"
                              + (f"\n{dead}" if dead else "") + "\nthe workers are stopped; start new ones with "
                              "wclab.workers.start_workers(models, n)") from e
        dead = self._dead_workers()  # NCCL may finish a collective with a lost peer only by aborting it
        if dead:
            self._fail(dead)
            raise WorkerError(f"a worker died during the forward:\n{dead}\nthe workers are stopped; start new "
                              "ones with wclab.workers.start_workers(models, n)")
        return out

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the workers (a "close" command, then terminate after ``timeout_s``) and leave the process group.
        Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        try:
            if self._error is None and all(p.is_alive() for p in self._procs):
                dist.broadcast_object_list([{"op": "close"}], src=0, group=self._control)
        except Exception:
            pass
        _stop(self._procs, grace_s=timeout_s)
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass
        self._store = None


def _plain(dit) -> DiT:
    """The `DiT` inside a `WorkerDiT` / `ParallelDiT` (e.g. ``workers.models`` of a closed group), or ``dit``."""
    from wclab.parallel import ParallelDiT

    while isinstance(dit, (WorkerDiT, ParallelDiT)):
        dit = dit.model
    if not isinstance(dit, DiT):
        raise WorkerError(f"models.high / models.low: expected wclab DiT experts, got {type(dit).__name__}")
    return dit


def _stop(procs: list, grace_s: float) -> None:
    """Join worker processes for up to ``grace_s`` s, then terminate (SIGTERM), then kill what is left."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5.0)
        if p.is_alive():
            p.kill()
            p.join(5.0)


def _reported_error(store, rank: int) -> str:
    """The traceback worker ``rank`` left in the store, indented (or "")."""
    try:
        if store is not None and store.check([f"{KEY}/error/{rank}"]):
            tb = store.get(f"{KEY}/error/{rank}").decode(errors="replace").strip()
            return ":\n    " + "\n    ".join(tb.splitlines()[-12:])
    except Exception:
        pass
    return ""


def _default_devices(models, n: Optional[int]) -> list[torch.device]:
    first = torch.device(models.device)
    if first.type == "cuda":
        first = torch.device("cuda", first.index if first.index is not None else torch.cuda.current_device())
        others = [torch.device("cuda", i) for i in range(torch.cuda.device_count()) if i != first.index]
        n = len(others) + 1 if n is None else n
        if n - 1 > len(others):
            raise WorkerError(f"{n} processes need {n} GPUs, {len(others) + 1} are visible "
                              "(or pass devices=[...])")
        return [first] + others[:n - 1]
    if first.type != "cpu":
        raise WorkerError(f"models on {first}: expected CUDA or CPU models")
    if n is None:
        raise WorkerError("on CPU, say how many processes: start_workers(models, n)")
    return [first] * n


def start_workers(models: "Models", processes: Optional[int] = None, *,
                  devices: Optional[Sequence[Union[str, torch.device]]] = None, timeout: float = 300.0,
                  load_timeout: float = 1800.0, progress: bool = True) -> Workers:
    """Start ``processes - 1`` worker processes that join this one (rank 0) in running each expert's forward.

    models: the notebook's `Models` (from `wclab.models.loading.load_models`, on ``devices[0]``); each worker
    loads both experts from ``models.paths`` in ``models.dtype`` with ``models.placement`` and ``models.lora``
    (weights changed in memory afterwards are not seen; a checksum comparison after loading catches it).
    processes: ranks including this one (default: every visible GPU). devices: one per rank (default: the models'
    GPU, then the other GPUs in order; on CPU all "cpu"). Backend: NCCL on CUDA, gloo on CPU. timeout: seconds any
    collective of a forward may wait (a worker stuck longer raises instead of hanging); load_timeout: seconds for
    the workers to start and load.
    Returns a `Workers`; pass ``workers.models`` to `Session` and ``close()`` it when done.
    """
    from tqdm.auto import tqdm
    from torch.distributed.device_mesh import init_device_mesh

    devs = [torch.device(d) for d in devices] if devices is not None else _default_devices(models, processes)
    if processes is not None and len(devs) != processes:
        raise WorkerError(f"devices: expected {processes} (one per process), got {len(devs)}")
    if len(devs) < 2:
        raise WorkerError(f"workers need at least 2 processes (this one included), got {len(devs)}")
    if torch.device(models.device) != devs[0] and not (devs[0].type == "cuda" and torch.device(models.device).index
                                                        is None):
        raise WorkerError(f"models are on {models.device}, expected rank 0's device {devs[0]}: load them there")
    types = {d.type for d in devs}
    if types not in ({"cuda"}, {"cpu"}):
        raise WorkerError(f"devices: expected all CUDA or all CPU, got {[str(d) for d in devs]}")
    backend = "nccl" if types == {"cuda"} else "gloo"
    if dist.is_initialized():
        raise WorkerError("torch.distributed is already initialised in this process (another Workers group, or "
                          "torchrun): close() the other group first; one group per process")
    world = len(devs)
    if backend == "nccl":
        os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast off (as wclab.parallel.init_distributed)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")  # a timeout raises here, not kills the kernel
        torch.cuda.set_device(devs[0])

    models = dataclasses.replace(models, high=_plain(models.high), low=_plain(models.low))
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=timedelta(seconds=timeout),
                          wait_for_workers=False)
    ctx = torch.multiprocessing.get_context("spawn")
    spec = dict(port=store.port, world=world, backend=backend, paths=models.paths, dtype=models.dtype,
                placement=models.placement, lora=models.lora, timeout_s=timeout)
    procs = [ctx.Process(target=_worker_main, args=(rank, str(devs[rank]), spec), daemon=True,
                         name=f"wclab-worker-{rank}") for rank in range(1, world)]
    for p in procs:
        p.start()
    bar = tqdm(total=2 * (world - 1), desc=f"workers loading experts ({world - 1} on "
               f"{', '.join(str(d) for d in devs[1:])})", disable=not progress, leave=False)
    try:
        _wait(store, procs, devs, "up", world - 1, load_timeout, None)  # imported, joining the group
        dist.init_process_group(backend, store=store, rank=0, world_size=world, timeout=timedelta(seconds=timeout))
        control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        _wait(store, procs, devs, "loaded", 2 * (world - 1), load_timeout, bar)
        mesh = init_device_mesh(devs[0].type, (world,))
        _compare_checksums(models.high, models.low, devs[0], world)
    except BaseException as e:
        _stop(procs, grace_s=0.0)
        if dist.is_initialized():
            dist.destroy_process_group()
        if isinstance(e, (WorkerError, KeyboardInterrupt)):
            raise
        raise WorkerError(f"starting {world - 1} workers failed ({type(e).__name__}: {e})") from e
    finally:
        bar.close()
    return Workers(models, devs, procs, store, control, mesh)


def _wait(store, procs, devs, counter: str, total: int, timeout_s: float, bar) -> None:
    """Poll the store until ``counter`` reaches ``total``; raise naming a worker that died or reported an error."""
    deadline, done = time.monotonic() + timeout_s, 0
    while True:
        n = store.add(f"{KEY}/{counter}", 0)
        if bar is not None and n > done:
            bar.update(n - done)
        done = n
        if n >= total:
            return
        for rank, p in enumerate(procs, start=1):
            err = _reported_error(store, rank)
            if err or not p.is_alive():
                p.join(2.0)
                raise WorkerError(f"worker {rank} ({devs[rank]}) failed while starting (exit code {p.exitcode})"
                                  + err)
        if time.monotonic() > deadline:
            raise WorkerError(f"workers did not {'start' if counter == 'up' else 'load the experts'} within "
                              f"{timeout_s:.0f} s ({n} of {total} done)")
        time.sleep(POLL_S)


def _tensor_sum(t: Tensor) -> Tensor:
    """float64 sum of a parameter or buffer of any dtype (float8 weights, complex RoPE tables included)."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype not in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        t = t.float()
    return t.sum(dtype=torch.float64)


def _checksum(high: DiT, low: DiT, device: torch.device) -> Tensor:
    """float64 [2]: the sum of every weight and buffer of each expert (a cheap "same weights" test across ranks;
    buffers hold float8 weights after `quantize_fp8`)."""
    return torch.stack([sum(_tensor_sum(t).cpu() for t in (*m.parameters(), *m.buffers())) for m in (high, low)]
                       ).to(device)


def _compare_checksums(high: DiT, low: DiT, device: torch.device, world: int) -> None:
    """All ranks: gather each rank's checksums; raise on every rank if a worker's experts differ from rank 0's."""
    sums = _checksum(high, low, device)
    gathered = [torch.empty_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    ref = gathered[0]
    bad = [r for r, s in enumerate(gathered) if not torch.allclose(s, ref, rtol=1e-9, atol=0.0)]
    if bad:
        raise WorkerError(f"the experts on worker(s) {bad} differ from the notebook's (weight sums "
                          f"{[s.tolist() for s in gathered]}): workers load models.paths as load_models did "
                          "(its experts= placement and lora= files are mirrored), but weights changed in memory "
                          "afterwards (load_lora, quantize_fp8, edits) are not; pass them to load_models instead")


def workers_if_several_gpus(models: "Models", **kwargs: Any) -> Optional[Workers]:
    """For notebooks: `start_workers` over every visible GPU when there are several and ``models`` are on CUDA;
    otherwise prints why not and returns None. ``kwargs`` go to `start_workers`."""
    n = torch.cuda.device_count()
    if n < 2:
        print(f"wclab.workers: {n} GPU visible, several are needed; skipping the multi-GPU cell")
        return None
    if torch.device(models.device).type != "cuda":
        print(f"wclab.workers: the models are on {models.device}; load them on cuda:0 to use {n} GPUs")
        return None
    return start_workers(models, n, **kwargs)


# ---------------------------------------------------------------- the worker's side

def _worker_main(rank: int, device: str, spec: dict) -> None:
    """A worker process: join the group, load both experts, then serve forwards until "close"."""
    store = None
    try:
        dev = torch.device(device)
        if dev.type == "cuda":
            os.environ["NCCL_NVLS_ENABLE"] = "0"
            torch.cuda.set_device(dev)
        timeout = timedelta(seconds=spec["timeout_s"])
        store = dist.TCPStore("127.0.0.1", spec["port"], spec["world"], is_master=False, timeout=timeout)
        store.add(f"{KEY}/up", 1)
        dist.init_process_group(spec["backend"], store=store, rank=rank, world_size=spec["world"], timeout=timeout)
        control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        paths, experts = spec["paths"], {}
        for name in ("high", "low"):  # as the notebook's load_models did: same placement, same LoRAs
            experts[name] = load_expert(getattr(paths, name), paths.num_heads, dev, spec["dtype"], spec["placement"],
                                        spec["lora"].get(name, ()))
            store.add(f"{KEY}/loaded", 1)
        _serve(rank, dev, experts, control)
    except BaseException:
        if store is not None:
            try:
                store.set(f"{KEY}/error/{rank}", traceback.format_exc())
            except Exception:
                pass
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _serve(rank: int, dev: torch.device, experts: dict, control) -> None:
    """Run forwards as rank 0 commands them; return on "close"."""
    from torch.distributed.device_mesh import init_device_mesh

    from wclab.parallel import ParallelDiT

    world = dist.get_world_size()
    mesh = init_device_mesh(dev.type, (world,))
    _compare_checksums(experts["high"], experts["low"], dev, world)
    parallel = {name: ParallelDiT(m, mesh) for name, m in experts.items()}
    while True:
        header: list[Any] = [None]
        dist.broadcast_object_list(header, src=0, group=control)
        cmd = header[0]
        if cmd["op"] == "close":
            return
        if cmd["op"] != "forward":
            raise WorkerError(f"unknown command {cmd['op']!r}")
        tensors = []
        for t in cmd["tensors"]:
            if t is None:
                tensors.append(None)
                continue
            buf = torch.empty(t[0], dtype=t[1], device=dev)
            dist.broadcast(buf, src=0)
            tensors.append(buf)
        model = parallel[cmd["expert"]]
        relay = _Relay(model.model, cmd["hooks"], math.prod(model.token_grid(tensors[0].shape)), mesh, dev, rank)
        try:
            with torch.no_grad(), relay:
                model(*tensors)
        except (_Aborted, WclabError):
            continue  # a hook raised in the notebook, or the inputs were refused on every rank: still in step


__all__ = ["Workers", "WorkerDiT", "WorkerError", "start_workers", "token_dim", "workers_if_several_gpus"]
