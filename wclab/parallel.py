"""Sequence-parallel DiT: the video tokens of one forward split across GPUs (or CPU processes).

    torchrun --nproc-per-node 4 -m wclab.parallel generate --conditions scene.json --image start.png \\
        --checkpoints checkpoints/ --out out.mp4 [--cfg-parallel auto|1|2] [--compile] [--attention flash4]

    # the same on 2 machines of 4 GPUs each (run on both; HOST = the first machine's address):
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id wc1 \\
        -m wclab.parallel generate ...

How (P ranks, S video tokens): after the patch embedding, rank r keeps the tokens of chunk r of
``torch.chunk(range(S), P)`` (`token_slice`) with the matching rows of the RoPE table and of the cross-attention
bias [B, 1, S, L]. Modulation, cross-attention onto the text, feed-forward and the head work token by token, so
they run on the slice unchanged. Self-attention is the only op that mixes tokens. On more than 2 ranks it runs
DeepSpeed-Ulysses style: q, k, v [B, S/P, heads, head_dim] are resharded from tokens to heads by an all-to-all,
each rank attends over all S tokens with heads/P heads, and an all-to-all brings the output back. On 2 ranks each
rank instead all-gathers every token's k and v and attends with its own queries and all heads: the same bytes as
Ulysses' four all-to-alls at P = 2 (twice as many at P = 4), in two calls, with no packing copies and no output
reshard. On GPUs the push engine runs instead (`wclab.push_attention`): Ulysses without collectives, each
exchange a Triton kernel storing the data it makes (q and k normalised and rotated, v, the attention output)
straight into the peers' symmetric memory, two barriers per block (2.6–3.1 % off a forward against the NCCL
engines on 2 H200s, 2.0–2.4 % on 4; bench/RESULTS.md, fifteenth pass). Forwards it cannot split run the NCCL
engines. The head's output is all-gathered, so every rank returns the full [B, out_dim, F, H, W] and steps the
sampler identically.

Engine: each Ulysses reshard is one all-to-all per tensor: ``torch.distributed.all_to_all_single`` with split sizes
where the runs are uneven (ranks hold torch.chunk's pieces of the tokens and as even as possible a share of the
heads), else our `all_to_all_equal` op without them (NCCL's own AllToAll, also from compiled code), laid out so
that with batch 1 what arrives is already [S, heads_r, head_dim] (one copy into the send buffer, none after; when
the heads divide evenly that copy is a single permute, which compiled code writes straight from RoPE's kernel);
the k / v gathers and the final gather are all-gathers of equal chunks, late ranks zero-padded, of which only the
first S rows are read. S need not be a multiple of P and no padding token ever acts as a key: the result equals one
device's up to float rounding.
PyTorch's ring `context_parallel` cannot do this (it patches every scaled_dot_product_attention call, including
the cross-attention onto the text with its bias mask, and its ring kernels take no mask, so padding tokens would
be keys), nor xDiT's Ulysses as the reference uses it (zero-padded chunks whose tokens act as keys; yunchang 0.6.4's
``UlyssesAttention`` ends in a flash kernel that has no CPU version) -- see the README's "Several GPUs" section.

CFG parallelism (``make_mesh(cfg=2)``): the ranks form a 2-D mesh ("cfg", "seq"); the first half of the ranks
computes the prompt (cond) branch of every step and the second half the negative-prompt (uncond) branch, each
half splitting its forward's tokens as above; one all-gather per forward gives every rank both velocities.
`Session` picks this up from the expert's ``cfg_branch`` / ``join_cfg``; hooks on a rank then see only its branch.
4 GPUs can run as 1 × 4 (sequence only) or 2 × 2 (CFG × sequence).

Each rank holds the whole model: this splits activations and attention work, not weights. Hooks inside the
blocks see this rank's token slice ([B, S_local, ...]); ``hook_embed`` and ``hook_head_out`` see full tensors.
Per-token running sums (e.g. `wclab.inspect.AttentionMaps`) are joined with `gather_attention_maps`.
NCCL NVLink multicast (NVLS) stays off: `init_distributed` sets ``NCCL_NVLS_ENABLE=0``. Opt-in
``nccl_window``: a forward's blocks allocate from one NCCL symmetric window (`NcclWindow`), where the exchanges copy
straight between the ranks' buffers (under the zero-CTA policy, equal all-gathers and all-to-alls on the copy
engines).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import warnings
from contextlib import contextmanager, nullcontext
from typing import Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.distributed_c10d import _resolve_process_group

from wclab.cli import StageClock, add_generate_arguments, generation_inputs, write_outputs
from wclab.errors import WclabError
from wclab.models.attention import BACKENDS
from wclab.models.fast import speed_up
from wclab.models.dit import DiT
from wclab.models.hooks import HookedModule
from wclab.models.loading import load_models
from wclab.push_attention import check_push, release_exchanges
from wclab.sampler import Session


SEQUENCE_ATTENTION = ("auto", "ulysses", "kv_gather", "ulysses_push")  # how split tokens attend to all tokens


class ParallelError(WclabError, RuntimeError):
    """The process group is missing or cannot split this model / these tensors."""


# ---------------------------------------------------------------- process group

def init_distributed(backend: Optional[str] = None) -> DeviceMesh:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
    LOCAL_RANK) and return a 1-D mesh over all ranks. backend: "nccl" when CUDA is available (each rank takes
    GPU LOCAL_RANK, bound as the group's device), else "gloo". Sets NCCL_NVLS_ENABLE=0 (NVLink multicast off)
    and, unless set, NCCL_CTA_POLICY=2 (zero-CTA, for `NcclWindow`) before NCCL starts. End with `shutdown`."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    # zero-CTA policy: where both buffers lie in an `NcclWindow`, NCCL copies with fewer (or no) SMs; elsewhere
    # its kernels run as under the default policy (bench/RESULTS.md, thirteenth pass)
    os.environ.setdefault("NCCL_CTA_POLICY", "2")
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise ParallelError(f"environment variables {missing} are not set: launch with torchrun "
                            "(torchrun --nproc-per-node N -m wclab.parallel generate ...)")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = None
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # device_id (NCCL): the communicator forms now, and the CFG / sequence groups of `make_mesh` split from it
        # (ncclCommSplit) instead of each forming its own at its first collective
        dist.init_process_group(backend, device_id=device)
    return _mesh(None)


def release_windows() -> None:
    """Release every `NcclWindow` made so far (deregistered while its communicator lives; a collective over each
    window's group) and forget the shared ones: the next forward that wants one makes it again."""
    for window in _shared:
        window.release()
    _shared.clear()


def shutdown() -> None:
    """`release_windows` and the push engine's buffers, then destroy the process group."""
    release_windows()
    release_exchanges()
    if dist.is_initialized():
        dist.destroy_process_group()


_default_mesh: tuple = ()  # (world process group, its 1-D mesh)


def _mesh(mesh: Optional[DeviceMesh]) -> DeviceMesh:
    """``mesh``, or a 1-D mesh over all ranks of the initialised process group (made once per group)."""
    global _default_mesh
    if mesh is not None:
        return mesh
    if not dist.is_initialized():
        raise ParallelError("torch.distributed is not initialised: launch with torchrun and call "
                            "wclab.parallel.init_distributed() first (or pass a DeviceMesh)")
    if not _default_mesh or _default_mesh[0] is not dist.group.WORLD:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        _default_mesh = (dist.group.WORLD, init_device_mesh(device_type, (dist.get_world_size(),)))
    return _default_mesh[1]


def make_mesh(cfg: int = 1) -> DeviceMesh:
    """The ranks of the initialised process group as a 2-D mesh ("cfg", "seq") of shape (cfg, world / cfg):
    ``cfg`` = 2 runs the two CFG branches on the two halves of the ranks, 1 runs both branches on all ranks
    (sequence split only). A collective: every rank must call it with the same ``cfg``."""
    if not dist.is_initialized():
        raise ParallelError("torch.distributed is not initialised: call wclab.parallel.init_distributed() first")
    world = dist.get_world_size()
    if cfg not in (1, 2) or world % cfg:
        raise ParallelError(f"cfg: expected 1 or 2 CFG groups dividing the {world} ranks, got {cfg}")
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device_type, (cfg, world // cfg), mesh_dim_names=("cfg", "seq"))


def _split_mesh(mesh: DeviceMesh) -> tuple[DeviceMesh, Optional[DeviceMesh]]:
    """(sequence mesh, CFG mesh or None) of a 1-D mesh or a 2-D ("cfg", "seq") mesh from `make_mesh`."""
    if mesh.ndim == 1:
        return mesh, None
    if mesh.ndim == 2 and mesh.mesh_dim_names == ("cfg", "seq"):
        return mesh["seq"], (mesh["cfg"] if mesh["cfg"].size() > 1 else None)
    raise ParallelError(f"expected a 1-D mesh or a 2-D ('cfg', 'seq') mesh from make_mesh, got dims "
                        f"{mesh.mesh_dim_names} of shape {tuple(mesh.shape)}")


def split_counts(total: int, ranks: int, balanced: bool) -> list[int]:
    """How many of ``total`` items each of ``ranks`` ranks holds: torch.chunk's pieces (ceil(total / ranks) each,
    late ranks fewer, as `token_slice`) or, ``balanced``, floor or ceil of total / ranks (the first ones more)."""
    if balanced:
        return [total // ranks + (r < total % ranks) for r in range(ranks)]
    chunk = -(-total // ranks)
    return [max(0, min(chunk, total - r * chunk)) for r in range(ranks)]


def token_slice(num_tokens: int, mesh: Optional[DeviceMesh] = None) -> slice:
    """This rank's tokens of ``num_tokens``: chunk r of ``torch.chunk`` over P ranks, i.e. [r·c, (r+1)·c)
    clipped to num_tokens with c = ceil(num_tokens / P) (late ranks may get fewer)."""
    mesh = _mesh(mesh)
    counts = split_counts(num_tokens, mesh.size(), balanced=False)
    start = sum(counts[:mesh.get_local_rank()])
    return slice(start, start + counts[mesh.get_local_rank()])


def _flat(pieces: list[Tensor]) -> Tensor:
    """``pieces`` one after another in one flat tensor (one copy)."""
    out = torch.empty(sum(p.numel() for p in pieces), dtype=pieces[0].dtype, device=pieces[0].device)
    start = 0
    for p in pieces:
        out[start:start + p.numel()].view(p.shape).copy_(p)
        start += p.numel()
    return out


def _all_to_all(send: Tensor, send_numels: list[int], recv_numels: list[int], group) -> Tensor:
    """One all-to-all over ``group``: rank j gets the j-th run of ``send_numels`` elements of the flat ``send``;
    returns what arrived, rank by rank, as one flat tensor of sum(recv_numels) elements. Equal runs go without
    split sizes (`all_to_all_equal`): NCCL's own AllToAll then (which, in an `NcclWindow` under the zero-CTA
    policy, runs on the copy engines) instead of grouped sends and receives."""
    if len(set(send_numels)) == 1 and len(set(recv_numels)) == 1:
        return torch.ops._c10d_functional.wait_tensor(all_to_all_equal(send, group.group_name))
    recv = send.new_empty(sum(recv_numels))
    dist.all_to_all_single(recv, send, recv_numels, send_numels, group=group)
    return recv


@torch.library.custom_op("wclab::all_to_all_equal", mutates_args=())
def all_to_all_equal(send: Tensor, group_name: str) -> Tensor:
    """Start an all-to-all of equal runs over the process group named ``group_name``: flat ``send`` [N] -> flat
    receive buffer [N] (rank j gets the j-th of P equal runs), ready after ``torch.ops._c10d_functional.wait_tensor``.

    Torch's own all-to-all op, which ``torch.compile`` traces ``dist.all_to_all_single`` into, always passes split
    sizes, which NCCL serves with grouped sends and receives; this one passes none, so NCCL runs its AllToAll
    (copy engines in an `NcclWindow`), also in compiled code. Inductor lowers it as it lowers torch's collectives
    (`_register_exchange_lowering`): ``send`` is neither reused nor overwritten before the wait."""
    recv = torch.empty_like(send)
    work = dist.all_to_all_single(recv, send, group=_resolve_process_group(group_name), async_op=True)
    torch._C._distributed_c10d._register_work(recv, work)  # found by wait_tensor
    return recv


@all_to_all_equal.register_fake
def _(send: Tensor, group_name: str) -> Tensor:
    _register_exchange_lowering()  # tracing for a compiler: Inductor lowers the op later
    return torch.empty_like(send)


@functools.cache
def _register_exchange_lowering() -> None:
    """Tell Inductor that `all_to_all_equal` is a collective started out of place (as torch's functional
    collectives): its input is kept from reuse until the matching wait. Done once, when the op is first traced
    (importing Inductor's lowerings costs seconds, which only compiled code should pay)."""
    from torch._inductor import ir
    from torch._inductor.lowering import register_lowering

    @register_lowering(torch.ops.wclab.all_to_all_equal)
    def _lower(send, group_name):
        send = ir.ExternKernel.require_contiguous(send)
        return ir.TensorBox.create(ir._CollectiveKernel.create_out_of_place(
            torch.ops.wclab.all_to_all_equal.default, send, group_name))


def _tokens_to_heads(x: Tensor, tokens: list[int], heads: list[int], rank: int, group) -> Tensor:
    """[B, S_local, H, D] (this rank's tokens, all heads) -> [B, S, H_r, D] (all tokens, this rank's heads;
    rank j gets ``heads[j]`` consecutive heads)."""
    B, S_local, _, D = x.shape
    if len(set(heads)) == 1:  # rank by rank in one permuted copy, which a compiled RoPE writes directly
        send = x.view(B, S_local, len(heads), heads[0], D).permute(2, 0, 1, 3, 4).contiguous().view(-1)
    else:
        send = _flat(x.split(heads, dim=2))
    sizes = [B * s * heads[rank] * D for s in tokens]
    recv = _all_to_all(send, [B * S_local * h * D for h in heads], sizes, group)
    if B == 1:  # rank by rank = token by token: already [S, H_r, D]
        return recv.view(1, sum(tokens), heads[rank], D)
    return torch.cat([p.view(B, s, heads[rank], D) for p, s in zip(recv.split(sizes), tokens)], dim=1)


def _heads_to_tokens(x: Tensor, tokens: list[int], heads: list[int], rank: int, group) -> Tensor:
    """[B, S, H_r, D] (all tokens, this rank's heads) -> [B, S_local, H, D] (this rank's tokens, all heads)."""
    B, _, _, D = x.shape
    pieces = x.split(tokens, dim=1)
    send = x.reshape(-1) if B == 1 and x.is_contiguous() else _flat(pieces)  # B = 1: already rank by rank
    sizes = [B * tokens[rank] * h * D for h in heads]
    recv = _all_to_all(send, [p.numel() for p in pieces], sizes, group)
    return torch.cat([p.view(B, tokens[rank], h, D) for p, h in zip(recv.split(sizes), heads)], dim=2)


def _all_gather_flat():
    """``torch.distributed.all_gather_single`` (torch >= 2.13), else its older name ``all_gather_into_tensor``."""
    return getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _pad_tokens(x: Tensor, count: int, dim: int) -> Tensor:
    """``x`` zero-padded along ``dim`` to ``count`` tokens (a late rank's short chunk, for an all-gather of equal
    chunks); ``x`` itself when it has ``count`` already."""
    missing = count - x.shape[dim]
    if missing == 0:
        return x
    return torch.cat([x, x.new_zeros((*x.shape[:dim], missing, *x.shape[dim + 1:]))], dim=dim)


def _all_gather_tokens(x: Tensor, tokens: list[int], group) -> Tensor:
    """[B, S_local, H, D] on each rank -> [B, S, H, D] (every rank's tokens, all heads) on every rank: one all-gather
    of equal chunks, late ranks zero-padded. With torch.chunk's split only the buffer's tail is padding, so the
    first S rows are the tokens in order (a view when B = 1)."""
    B, _, H, D = x.shape
    chunk = tokens[0]
    x = _pad_tokens(x, chunk, dim=1)
    out = x.new_empty(len(tokens) * B * chunk * H * D)
    _all_gather_flat()(out, x.reshape(-1), group=group)
    out = out.view(len(tokens), B, chunk, H, D)
    out = out.view(1, -1, H, D) if B == 1 else out.movedim(0, 1).reshape(B, -1, H, D)
    return out[:, :sum(tokens)]


def gather_tokens(local: Tensor, num_tokens: int, dim: int = 1, mesh: Optional[DeviceMesh] = None) -> Tensor:
    """All-gather per-token slices along ``dim``: [..., S_local, ...] on each rank -> [..., num_tokens, ...] on
    every rank (``S_local`` = this rank's `token_slice`). A collective: every rank must call it."""
    mesh, dim = _mesh(mesh), dim % local.ndim
    mine = token_slice(num_tokens, mesh)
    if local.shape[dim] != mine.stop - mine.start:
        raise ParallelError(f"gather_tokens: expected this rank's {mine.stop - mine.start} of {num_tokens} tokens "
                            f"along dim {dim}, got shape {list(local.shape)}")
    counts = split_counts(num_tokens, mesh.size(), balanced=False)
    padded = _pad_tokens(local.movedim(dim, 0), counts[0], dim=0)
    parts = [torch.empty_like(padded, memory_format=torch.contiguous_format) for _ in counts]
    dist.all_gather(parts, padded.contiguous(), group=mesh.get_group())
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).movedim(0, dim).contiguous()


def gather_token_sums(local: Tensor, num_tokens: int, mesh: Optional[DeviceMesh] = None) -> Tensor:
    """Per-token running sums [K, S_local] of each rank -> [K, S] on every rank (all-gather, a collective)."""
    return gather_tokens(local, num_tokens, dim=-1, mesh=mesh)


def gather_attention_maps(maps, mesh: Optional[DeviceMesh] = None):
    """Join a `wclab.inspect.AttentionMaps` recorded under `ParallelDiT`: each rank's ``maps.sums[step]``
    [R, S_local] becomes [R, S] (counts are per rank already complete). Call once on every rank after the run,
    before reading maps; returns ``maps``. ``mesh``: the sequence mesh (of a 2-D mesh, its "seq" part)."""
    mesh = _split_mesh(_mesh(mesh))[0]
    num_tokens = math.prod(maps.grid)
    maps.sums = {step: gather_token_sums(s, num_tokens, mesh) for step, s in sorted(maps.sums.items())}
    return maps


def push_eligible(model: DiT, num_tokens: int, ranks: int, hooks_active: bool, freqs: Tensor) -> bool:
    """Whether a split forward may run the push engine (`wclab.push_attention`, on CUDA): it computes the whole
    self-attention itself, so no hook may wait inside it, the RoPE table ``freqs`` must be the compiled path's
    real (cos, sin) pairs (not the float64 complex one), tokens and heads must divide evenly over the ranks, and
    every projection must be a plain ``nn.Linear`` with a bias (not an `Fp8Linear`)."""
    try:
        check_push(torch.device("cuda"), num_tokens, model.cfg.num_heads, ranks)
    except WclabError:
        return False
    plain = all(type(getattr(b.self_attn, n)) is torch.nn.Linear and getattr(b.self_attn, n).bias is not None
                for b in model.blocks for n in "qkvo")
    return plain and not hooks_active and not freqs.is_complex()


# ---------------------------------------------------------------- NCCL window

def window_eligible(num_tokens: int, num_heads: int, ranks: int, hooks_active: bool) -> bool:
    """Whether a split forward may run in the NCCL window (`NcclWindow`): every rank must allocate the same blocks
    in the same order, which holds when tokens and heads divide evenly over the ranks and no hook (which may keep
    tensors on some ranks only) is attached."""
    return ranks > 1 and num_tokens % ranks == 0 and num_heads % ranks == 0 and not hooks_active


class NcclWindow:
    """A split forward's memory as one NCCL symmetric window of the sequence group (``ParallelDiT(nccl_window=
    True)``): the exchanges' send and receive buffers then lie in memory every rank has mapped, and NCCL copies
    straight between the ranks' buffers (all-to-alls and all-gathers of equal runs on the copy engines, under the
    zero-CTA policy `init_distributed` sets) instead of through its staging buffers (2 × H200: 0.9–1.1 % off a
    forward; bench/RESULTS.md, thirteenth and fourteenth passes). One window per sequence group and GPU
    (`shared_window`): the two experts never run at once.

    Sized by measurement: the first forward runs in a plain memory pool (`probe`), and at the next forward the
    window is made (``reserve``, a collective) with `window_size` of the largest pool any rank needed. The window
    is one segment of a pool of the group's NCCL allocator, made on the forward's stream (the caching allocator
    serves a stream's blocks from its own segments only) and registered once; each forward's blocks are carved from
    it. A symmetric window assumes a block lies at the same offset on every rank, so it is used only where
    `window_eligible` says every rank allocates alike. Blocks that do not fit go to further segments of the pool,
    made on demand (`hand_over` warns once; on 2 H200s NCCL still used the copy engines there). The forward runs
    on the window's own CUDA stream, synchronised with the caller's both ways: NCCL's copy-engine path refuses the
    legacy default stream, on which a collective with async_op=False would run. NCCL >= 2.27 and torch's
    ``register_mem_pool`` are needed; `shutdown` releases the window before the process group goes."""

    def __init__(self, group, device: torch.device):
        self.group, self.device = group, device
        self.pool = None  # the registered window's pool (None: not made yet)
        self.probe = None  # the first forward's plain pool, measured to size the window
        self.size_bytes = 0
        self.probed_bytes = 0  # what the probed forward needed (the largest over the ranks)
        self.stream = None  # the forward's CUDA stream (made at the first forward)
        self.checked = False  # whether the first forward in the window was checked for overflow (`hand_over`)

    def reserve_measured(self) -> None:
        """Make the window `window_size` bytes large for what the probed forward needed on the neediest rank (a
        collective over the group), and drop the probe."""
        need = torch.tensor([pool_bytes(self.probe.snapshot())], device=self.device)
        dist.all_reduce(need, op=dist.ReduceOp.MAX, group=self.group)
        self.probe, self.probed_bytes = None, int(need.item())  # the probe's memory goes back to the device
        self.reserve(window_size(self.probed_bytes))

    def reserve(self, size_bytes: int) -> None:
        """Make and register a window of ``size_bytes`` (a collective over the group: every rank calls it with the
        same size)."""
        backend = self.group._get_backend(self.device)
        self.pool = torch.cuda.MemPool(backend.mem_allocator)
        self.stream = self.stream or torch.cuda.Stream(self.device)
        # made on the forward's stream: the caching allocator serves a stream's blocks from its own segments only
        with torch.cuda.stream(self.stream), torch.cuda.use_mem_pool(self.pool):
            block = torch.empty(size_bytes, dtype=torch.uint8, device=self.device)
        del block  # freed into the pool: its one segment stays, for the forward's blocks
        torch.cuda.synchronize(self.device)
        backend.register_mem_pool(self.pool, symm=True)
        self.size_bytes = size_bytes

    def release(self) -> None:
        """Deregister and drop the window (a collective over the group); a later forward measures and makes it
        again."""
        if self.pool is not None:
            torch.cuda.synchronize(self.device)
            self.group._get_backend(self.device).deregister_mem_pool(self.pool)
        self.pool, self.probe, self.size_bytes, self.probed_bytes, self.checked = None, None, 0, 0, False

    @contextmanager
    def allocating(self) -> Iterator[None]:
        """The ``with`` body on the window's stream (after the caller's work so far; the caller's stream waits
        for it at the end) with its allocations from the window, or, before there is one, from a new probe pool.
        Tensors the body returns to the caller must be passed to `hand_over`."""
        if self.pool is None:
            self.probe = torch.cuda.MemPool()
        self.stream = self.stream or torch.cuda.Stream(self.device)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream), torch.cuda.use_mem_pool(self.pool or self.probe):
                yield
        finally:
            caller.wait_stream(self.stream)

    def hand_over(self, t: Tensor) -> Tensor:
        """``t`` (made inside `allocating`) for use on the caller's stream: its memory is not reused before the
        caller's work on it is done; after a probed forward, a copy outside the probe (which is dropped at the next
        forward). After the window's first forward, warns once if that forward outgrew it."""
        t.record_stream(torch.cuda.current_stream(self.device))
        if self.pool is None:
            return t.clone()  # on the caller's stream, which waited for the window's
        if not self.checked:
            self.checked = True
            extra = pool_bytes(self.pool.snapshot()) - self.size_bytes
            if extra > 0:
                warnings.warn(f"NcclWindow: the forward needed {extra / 2 ** 30:.2f} GiB more than the window's "
                              f"{self.size_bytes / 2 ** 30:.2f} GiB, in further segments made on demand (the probed "
                              "forward needed less than this one)", stacklevel=2)
        return t


def pool_bytes(segments: list[dict]) -> int:
    """Bytes of a memory pool's large segments (``MemPool.snapshot()`` entries). The caching allocator's 2 MiB
    segments for blocks under 1 MiB are not counted: an exchange buffer is never that small at the sizes a window
    is for, and they are allocated beside the window's one segment all the same."""
    return sum(seg["total_size"] for seg in segments if seg["total_size"] > 2 ** 21)


def window_size(need_bytes: int) -> int:
    """Bytes of window for a forward that took ``need_bytes`` of pool segments: a quarter more (the probe's
    segments grew one by one; one segment is carved differently), rounded up to 64 MiB."""
    return -(-int(need_bytes * 1.25) // 2 ** 26) * 2 ** 26


def shared_window(group, device: torch.device) -> NcclWindow:
    """The `NcclWindow` of ``group`` on ``device``, made (empty: reserved at its second forward) on first call."""
    for window in _shared:
        if window.group is group and window.device == device:
            return window
    _shared.append(NcclWindow(group, device))
    return _shared[-1]


_shared: list[NcclWindow] = []  # every window made, reserved or not (`release_windows` forgets them)


# ---------------------------------------------------------------- the model

class ParallelDiT(HookedModule):
    """``DiT`` whose forward splits the video tokens across the ranks of ``mesh`` (default: all ranks).

    Same call and result as the wrapped model: ``forward(x [B, in_dim, F, H, W], timestep [B], context
    [B, L, text_dim], bias [B, 1, S, L] | None) -> [B, out_dim, F, H, W]`` on every rank; every rank must call
    it with the same inputs. Hook points, ``cfg``, ``token_grid``... are the wrapped model's.
    ``sequence_attention``: "ulysses" (all-to-alls to a head split and back; at most ``num_heads`` ranks),
    "kv_gather" (every rank gathers all keys and values), "ulysses_push" (CUDA: Ulysses whose exchanges are
    stores into the peers' memory from the kernels that make the data, `wclab.push_attention`) or "auto"
    (default): "ulysses_push" on GPUs, else "kv_gather" on 2 ranks, where it moves as many bytes as Ulysses in
    fewer calls, and "ulysses" above, which moves fewer. Forwards the push engine cannot split
    (`push_eligible`: a hook attached, tokens or heads not divisible by the ranks, the float64 RoPE of an
    uncompiled model, float8 projections) run the one of those two that fits the rank count.
    ``nccl_window``: run the blocks in an `NcclWindow` (NCCL on CUDA only) whenever `window_eligible` allows.
    """

    def __init__(self, model: DiT, mesh: Optional[DeviceMesh] = None, sequence_attention: str = "auto",
                 nccl_window: bool = False):
        super().__init__()
        self.model = model
        self.mesh, self.cfg_mesh = _split_mesh(_mesh(mesh))  # sequence mesh; CFG mesh (None: no CFG split)
        self.window = None
        if nccl_window:
            if self.mesh.device_type != "cuda" or dist.get_backend(self.mesh.get_group()) != "nccl":
                raise ParallelError("nccl_window: needs the NCCL backend on CUDA devices, got "
                                    f"{dist.get_backend(self.mesh.get_group())!r} on {self.mesh.device_type!r}")
            if torch.cuda.nccl.version() < (2, 27):
                raise ParallelError("nccl_window: needs NCCL >= 2.27 (symmetric windows), this torch has NCCL "
                                    + ".".join(map(str, torch.cuda.nccl.version())))
            self.window = shared_window(self.mesh.get_group(), torch.device("cuda", torch.cuda.current_device()))
        if sequence_attention not in SEQUENCE_ATTENTION:
            raise ParallelError(f"sequence_attention: expected one of {SEQUENCE_ATTENTION}, got {sequence_attention!r}")
        nccl_engine = "kv_gather" if self.mesh.size() == 2 else "ulysses"
        if sequence_attention == "auto":  # the push engine on GPUs: faster at 2 and 4 ranks (bench/RESULTS.md)
            sequence_attention = "ulysses_push" if self.mesh.device_type == "cuda" else nccl_engine
        if sequence_attention == "ulysses_push" and self.mesh.device_type != "cuda":
            raise ParallelError(f"sequence_attention 'ulysses_push' needs CUDA devices, got {self.mesh.device_type!r}")
        self.sequence_attention = sequence_attention  # "ulysses", "kv_gather" or "ulysses_push"
        # the engine of forwards the push engine cannot split (`push_eligible`)
        self.fallback_attention = nccl_engine if sequence_attention == "ulysses_push" else sequence_attention
        if sequence_attention in ("ulysses", "ulysses_push") and model.cfg.num_heads < self.mesh.size():
            raise ParallelError(f"Ulysses attention splits the {model.cfg.num_heads} heads across ranks: at most "
                                f"{model.cfg.num_heads} ranks, got {self.mesh.size()}")
        self._hook_points = model.hook_points()

    @property
    def cfg_branch(self) -> Optional[str]:
        """Under CFG parallelism the branch this rank computes ("cond" or "uncond"), else None (both)."""
        if self.cfg_mesh is None:
            return None
        return ("cond", "uncond")[self.cfg_mesh.get_local_rank()]

    def join_cfg(self, local: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's branch output -> (cond, uncond) on every rank (an all-gather over the CFG groups)."""
        if self.cfg_mesh is None:
            raise ParallelError("join_cfg: this model has no CFG split (make its mesh with make_mesh(cfg=2))")
        parts = [torch.empty_like(local) for _ in range(2)]
        dist.all_gather(parts, local.contiguous(), group=self.cfg_mesh.get_group())
        return parts[0], parts[1]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (self.model)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    @contextmanager
    def _sequence_attention(self, num_tokens: int, freqs: Tensor, device: torch.device,
                            hooks_active: bool) -> Iterator[None]:
        """Swap every block's self-attention for one over all ``num_tokens`` tokens across the ranks:
        ``self.sequence_attention`` "kv_gather" (each rank gathers every token's keys and values and attends with
        its own queries), "ulysses" or "ulysses_push" (where this forward allows it, else `fallback_attention`)."""
        ranks, rank, group = self.mesh.size(), self.mesh.get_local_rank(), self.mesh.get_group()
        if ranks == 1:  # nothing to reshard
            yield
            return
        if (self.sequence_attention == "ulysses_push" and device.type == "cuda"
                and push_eligible(self.model, num_tokens, ranks, hooks_active, freqs)):
            with self._split_forwards(_push_forward(group.group_name)):
                yield
            return
        tokens = split_counts(num_tokens, ranks, balanced=False)  # as token_slice
        heads = split_counts(self.model.cfg.num_heads, ranks, balanced=True)

        def sequence_parallel(local_attention):
            if self.fallback_attention == "kv_gather":
                def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # each [B, S_local, heads, head_dim]
                    k, v = (_all_gather_tokens(t, tokens, group) for t in (k, v))  # [B, S, heads, head_dim]
                    return local_attention(q, k, v)
                return attention

            def ulysses(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                q, k, v = (_tokens_to_heads(t, tokens, heads, rank, group) for t in (q, k, v))  # [B, S, H_r, D]
                return _heads_to_tokens(local_attention(q, k, v), tokens, heads, rank, group)
            return ulysses

        modules = [block.self_attn for block in self.model.blocks]
        saved = [m.attention for m in modules]
        for m, local_attention in zip(modules, saved):
            m.attention = sequence_parallel(local_attention)
        try:
            yield
        finally:
            for m, local_attention in zip(modules, saved):
                m.attention = local_attention

    @contextmanager
    def _split_forwards(self, split_forward) -> Iterator[None]:
        """Every block's self-attention as ``split_forward`` (module, x, freqs) -> out for the ``with`` body."""
        modules = [block.self_attn for block in self.model.blocks]
        for m in modules:
            m.split_forward = split_forward
        try:
            yield
        finally:
            for m in modules:
                m.split_forward = None

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """As `DiT.forward`, with blocks and head run on this rank's tokens (see the module docstring)."""
        m = self.model
        e = m.embed(x, timestep, context, bias)
        num_tokens = e.tokens.shape[1]
        mine = token_slice(num_tokens, self.mesh)
        # [B, S_local, dim] with dense strides, as every block's output (one compiled graph serves every block)
        x = e.tokens[:, mine].clone(memory_format=torch.contiguous_format)
        freqs = e.freqs[mine]
        bias = None if e.bias is None else e.bias[:, :, mine]  # [B, 1, S_local, L]
        hooks_active = any(hp.active for hp in self._hook_points.values())
        window = self._window_for(num_tokens, hooks_active)
        with self._sequence_attention(num_tokens, freqs, x.device, hooks_active), \
                (window.allocating() if window else nullcontext()):
            for block in m.blocks:
                x = block(x, e.context, e.t_mod, freqs, bias)
            x = gather_tokens(m.head(x, e.t), num_tokens, dim=1, mesh=self.mesh)  # [B, S, out_dim·prod(patch)]
        if window:
            x = window.hand_over(x)
        return m.hook_head_out(m.unpatchify(x, e.grid))

    def _window_for(self, num_tokens: int, hooks_active: bool) -> Optional[NcclWindow]:
        """``self.window`` when there is one and this forward may use it (`window_eligible`), else None; made, at
        the size the probed forward before needed, at the second eligible forward."""
        if self.window is None:
            return None
        if not window_eligible(num_tokens, self.model.cfg.num_heads, self.mesh.size(), hooks_active):
            return None
        if self.window.probe is not None:  # the previous forward was probed: make the window now
            self.window.reserve_measured()
        return self.window


def _push_forward(group_name: str):
    """A `SelfAttention.split_forward` running `wclab.push_attention.push_self_attention` over ``group_name``."""
    def split_forward(m, x: Tensor, freqs: Tensor) -> Tensor:
        return torch.ops.wclab.push_self_attention(
            x, m.q.weight, m.q.bias, m.k.weight, m.k.bias, m.v.weight, m.v.bias, m.o.weight, m.o.bias,
            m.norm_q.weight, m.norm_k.weight, freqs, m.norm_q.eps, m.num_heads, group_name, m.backend)
    return split_forward


class ParallelVAE(torch.nn.Module):
    """`VAE` whose tiled encode and decode spread the tiles over the ranks of ``mesh`` (all its ranks, CFG
    groups included): rank r runs tiles r, r + P, ... then every tile is broadcast from its rank and all ranks
    blend them in the same order, so every rank returns the same result as one process, bitwise. Untiled calls
    run whole on every rank. Same calls and attributes as the wrapped `VAE` otherwise; every rank must call."""

    def __init__(self, vae, mesh: Optional[DeviceMesh] = None):
        super().__init__()
        self.vae = vae
        self.seq_mesh, self.cfg_mesh = _split_mesh(_mesh(mesh))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "vae":
                raise
            return getattr(self.vae, name)

    def map_tiles(self, fn, tiles: list[Tensor], desc: str) -> Iterator[Tensor]:
        """``fn`` of each tile in order (as `VAE.map_tiles`), this rank computing only its share. Tile i belongs
        to rank (i mod P) of the mesh in row-major order; it travels over the mesh's own groups (the owner's CFG
        group, then every sequence group), so no process group is created."""
        seq, cfg = self.seq_mesh, self.cfg_mesh
        seq_rank, seq_size = seq.get_local_rank(), seq.size()
        cfg_rank, cfg_size = (cfg.get_local_rank(), cfg.size()) if cfg is not None else (0, 1)
        me, size = cfg_rank * seq_size + seq_rank, cfg_size * seq_size
        mine = {i: fn(t) for i, t in enumerate(tiles) if i % size == me}
        meta = {i: (tuple(y.shape), y.dtype) for i, y in mine.items()}  # tile -> (shape, dtype), from every rank
        for mesh in (seq, cfg):
            if mesh is not None:
                parts = [None] * mesh.size()
                dist.all_gather_object(parts, meta, group=mesh.get_group())
                meta = {k: v for part in parts for k, v in part.items()}
        for i in range(len(tiles)):
            owner_cfg, owner_seq = divmod(i % size, seq_size)
            shape, dtype = meta[i]
            y = mine.pop(i) if i in mine else torch.empty(shape, dtype=dtype, device=tiles[i].device)
            y = y.contiguous()
            if cfg is not None and seq_rank == owner_seq:  # the owner's column: across the CFG groups
                dist.broadcast(y, group_src=owner_cfg, group=cfg.get_group())
            dist.broadcast(y, group_src=owner_seq, group=seq.get_group())  # then along every sequence group
            yield y

    @contextmanager
    def _spread(self) -> Iterator[None]:
        self.vae.map_tiles = self.map_tiles
        try:
            yield
        finally:
            del self.vae.map_tiles

    def encode(self, video: Tensor, **kwargs) -> Tensor:
        """`VAE.encode` with its tiles spread over the ranks."""
        with self._spread():
            return self.vae.encode(video, **kwargs)

    def decode(self, latents: Tensor, **kwargs) -> Tensor:
        """`VAE.decode` with its tiles spread over the ranks."""
        with self._spread():
            return self.vae.decode(latents, **kwargs)


def parallelize_models(models, mesh: Optional[DeviceMesh] = None, sequence_attention: str = "auto",
                       nccl_window: bool = False):
    """A copy of `wclab.models.loading.Models` whose two experts are `ParallelDiT` and whose VAE is a
    `ParallelVAE` (text encoder and weights shared): ``Session(parallelize_models(models), ...)`` runs
    sequence-parallel, and CFG-parallel too when ``mesh`` comes from ``make_mesh(cfg=2)``; tiled VAE work is
    spread over all ranks (every rank must then call ``session.decode()``). ``sequence_attention``,
    ``nccl_window``: as `ParallelDiT`'s."""
    mesh = _mesh(mesh)

    def split(dit):
        return ParallelDiT(dit.model if isinstance(dit, ParallelDiT) else dit, mesh, sequence_attention, nccl_window)

    vae = models.vae.vae if isinstance(models.vae, ParallelVAE) else models.vae
    return dataclasses.replace(models, high=split(models.high), low=split(models.low), vae=ParallelVAE(vae, mesh))


# ---------------------------------------------------------------- launcher

def cfg_groups(choice: str, world: int, cfg_scale: float) -> int:
    """How many CFG groups ``--cfg-parallel`` asks for: "1", "2", or "auto" = 2 when the ranks split evenly,
    there are at least 2 and CFG is on (scale != 1), else 1."""
    if choice == "auto":
        return 2 if world >= 2 and world % 2 == 0 and cfg_scale != 1.0 else 1
    return int(choice)


def _generate(args) -> int:
    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    if dist.get_backend() == "nccl":
        args.device = f"cuda:{torch.cuda.current_device()}"
    try:
        inputs = generation_inputs(args)
        mesh = make_mesh(cfg_groups(args.cfg_parallel, world, inputs.settings.cfg))
        clock = StageClock()
        models = load_models(**inputs.model_kwargs)
        for expert in (models.high, models.low):
            expert.set_attention_backend(args.attention)
            if args.compile:
                speed_up(expert)
        clock.mark("load")
        session = Session(parallelize_models(models, mesh, nccl_window=args.nccl_window), inputs.scene, args.image,
                          inputs.settings, progress=rank == 0)
        clock.mark("prepare")
        session.run()
        clock.mark("denoise")
        video = session.decode()  # a collective when tiled: every rank decodes its share of the tiles
        clock.mark("decode")
        if rank == 0:
            write_outputs(args, video, session.latents,
                          note=f", {world} ranks as {mesh.shape[0]} CFG x {mesh.shape[1]} sequence")
            print(f"stages (rank 0): {clock}", flush=True)
        dist.barrier()
    finally:
        shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``wclab generate``'s arguments plus the launcher's own: --cfg-parallel, --compile, --attention."""
    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m wclab.parallel",
                                     description="WorldCanvas generation on several GPUs (sequence and CFG split)")
    generate = parser.add_subparsers(dest="command", required=True).add_parser("generate")
    add_generate_arguments(generate)
    generate.add_argument("--cfg-parallel", default="auto", choices=["auto", "1", "2"],
                          help="CFG groups: 2 = cond and uncond branches on the two halves of the ranks; "
                               "auto = 2 when the rank count is even (default)")
    generate.add_argument("--compile", action="store_true", help="wclab.models.fast.speed_up on both experts")
    generate.add_argument("--attention", default=None, choices=list(BACKENDS),
                          help="attention backend (default: auto = flash kernels when installed, else SDPA)")
    generate.add_argument("--nccl-window", action="store_true",
                          help="the split forwards' memory as one NCCL symmetric window (GPUs; see ParallelDiT)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``torchrun --nproc-per-node N -m wclab.parallel generate ...`` (arguments of ``wclab generate`` plus
    --cfg-parallel, --compile, --attention)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "generate":
        parser.error(f"only 'generate' runs in parallel, got {args.command!r}")
    try:
        return _generate(args)
    except WclabError as e:
        print(f"wclab.parallel: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
