"""Ulysses self-attention whose all-to-alls are copy-engine writes into the peers' memory, overlapped with the
attention itself (CUDA only; `wclab.parallel.ParallelDiT` with ``sequence_attention="ulysses_p2p"``).

The NCCL engine reshards q, k, v from tokens to heads with all-to-all kernels that run on the SMs before the
attention can start, and the output back after it ends: on 4 GPUs about 5 % of a forward in which nothing else
runs. Here each rank's heads are cut into ``rounds`` head groups, and the exchange runs on a side stream of
``cudaMemcpyAsync`` copies into PyTorch symmetric memory (`torch.distributed._symmetric_memory`: every rank maps
every other rank's buffer), which the GPU's copy engines carry over NVLink without taking SMs:

    side stream:     [q, k, v of group 0 ->][group 1 ->][group 2 ->] ...  [out 0 ->]       [out 1 ->]
    compute stream:                         [attend group 0]        [attend group 1][place 0][attend group 2]...

so while the kernels attend over one head group, the next group's q, k, v arrive and the previous group's
output leaves; arrived outputs are placed into the result between rounds. Each copy is followed by a 32-bit
flag written into the receiving rank's symmetric memory, and a stream waits for flags before it reads data or
overwrites a peer's buffer, both with the driver's stream memory operations (cuStreamWriteValue32 /
cuStreamWaitValue32, run by the GPU's front end: unlike a barrier kernel they need no SM, which the attention
kernels hold). Per head the attention is the one kernel call over the same tokens as the NCCL engine's, so the
result is the same (bitwise, measured).

Layouts (P ranks, this rank r with S_r of the S tokens, H_r = H / P heads in ``rounds`` groups of h, head_dim D):
the caller packs q, k, v into ``packed`` [rounds, P, B, S_r, 3, h, D] (`pack_qkv`: compiled code writes it
straight from RoPE's kernel), so that what goes to rank p for group g is one contiguous run; it lands in rank
p's symmetric buffer ``recv`` [rounds, B, S, 3, h, D] at rank r's tokens, where q, k, v of a group are strided
views over all S tokens (flash kernels take them as they are). The attention output [B, S, h, D] of group g goes
back as rank p's token rows into rank p's ``back`` [rounds, P, B, S_max, h, D], from which round g is copied into
the result [B, S_r, H, D] as soon as it is complete.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from wclab.errors import WclabError
from wclab.models.attention import attention


ROUNDS = 10  # head rounds per block (bench/peer_attention.py measures others)


class PeerAttentionError(WclabError, RuntimeError):
    """This machine, build or split cannot run the copy-engine Ulysses attention."""


def check_peer_attention(device: torch.device, heads: list[int], rounds: int) -> None:
    """Raise PeerAttentionError unless ``device`` is CUDA with PyTorch symmetric memory and the heads split evenly
    into ``rounds`` groups on every rank (``heads``: heads per rank)."""
    if device.type != "cuda":
        raise PeerAttentionError(f"ulysses_p2p attention needs CUDA devices (symmetric memory), got {device}")
    try:
        import torch.distributed._symmetric_memory  # noqa: F401
    except ImportError as e:
        raise PeerAttentionError(f"ulysses_p2p attention needs torch.distributed._symmetric_memory: {e}") from e
    if len(set(heads)) != 1 or heads[0] % rounds:
        raise PeerAttentionError(f"ulysses_p2p attention needs the same number of heads on every rank, divisible by "
                                 f"rounds={rounds}; heads per rank: {heads}")


def pack_qkv(q: Tensor, k: Tensor, v: Tensor, ranks: int, rounds: int) -> Tensor:
    """q, k, v [B, S_r, H, D] (this rank's tokens, all heads) -> [rounds, P, B, S_r, 3, h, D] with h = H / (P ·
    rounds): the run [g, p] is what rank p attends with in round g (its heads p·H/P + g·h ... + h)."""
    B, S_r, H, D = q.shape
    h = H // (ranks * rounds)
    qkv = torch.stack([q, k, v], dim=2)  # [B, S_r, 3, H, D]
    return qkv.view(B, S_r, 3, ranks, rounds, h, D).permute(4, 3, 0, 1, 2, 5, 6).contiguous()


_WAIT_GEQ = 0x0  # CU_STREAM_WAIT_VALUE_GEQ: until (int32)(*addr - value) >= 0
_WRITE_FENCED = 0x0  # CU_STREAM_WRITE_VALUE_DEFAULT: after a memory fence over the stream's earlier writes


@functools.lru_cache(maxsize=None)
def _stream_memory_ops() -> tuple[Callable, Callable]:
    """The CUDA driver's cuStreamWaitValue32 and cuStreamWriteValue32: a stream waits for / writes a 32-bit flag
    in the GPU's front end, without a kernel (so without waiting for an SM that attention kernels hold)."""
    lib = ctypes.CDLL("libcuda.so.1")
    ops = []
    for name in ("cuStreamWaitValue32", "cuStreamWriteValue32"):
        fn = getattr(lib, name + "_v2", None) or getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint]
        fn.restype = ctypes.c_int
        ops.append(fn)
    return ops[0], ops[1]


def _driver_call(fn: Callable, stream: torch.cuda.Stream, address: int, value: int, flags: int) -> None:
    rc = fn(ctypes.c_void_p(stream.cuda_stream), address, value & 0xFFFFFFFF, flags)
    if rc != 0:
        raise PeerAttentionError(f"{fn.__name__} failed with CUDA driver error {rc} (stream memory operations "
                                 "on peer memory are not supported here?)")


@dataclass
class _Exchange:
    """One rank's symmetric buffers, side stream and flags for a (group, tokens, shape, dtype)."""
    group: dist.ProcessGroup
    tokens: list[int]
    rounds: int
    batch: int
    heads: int  # per round (h)
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    recv: list[Tensor] = field(init=False)  # per rank p: p's [rounds, B, S, 3, h, D] (mapped here)
    back: list[Tensor] = field(init=False)  # per rank p: p's [rounds, P, B, S_max, h, D]
    flags: list[int] = field(init=False)  # per rank p: address of p's int32 flags (mapped here)
    calls: int = 0  # calls so far: call n writes n into the flags

    def __post_init__(self):
        import torch.distributed._symmetric_memory as symm_mem
        P, S, S_max = len(self.tokens), sum(self.tokens), max(self.tokens)
        G, B, h, D = self.rounds, self.batch, self.heads, self.head_dim
        recv_shape, back_shape = (G, B, S, 3, h, D), (G, P, B, S_max, h, D)
        recv_numel = G * B * S * 3 * h * D
        name = self.group.group_name
        self.buffer = symm_mem.empty(recv_numel + G * P * B * S_max * h * D, dtype=self.dtype, device=self.device)
        handle = symm_mem.rendezvous(self.buffer, name)
        self.recv = [handle.get_buffer(p, recv_shape, self.dtype, 0) for p in range(P)]
        self.back = [handle.get_buffer(p, back_shape, self.dtype, recv_numel) for p in range(P)]
        # flags [2 · rounds + 1, P] of int32, call n writes n: [g, q] (g < rounds): rank q's round-g q, k, v are
        # here; [rounds + g, q]: q's round-g output is here; [2 · rounds, q]: q is done with its buffers.
        self.flag_tensor = symm_mem.empty((2 * G + 1) * P, dtype=torch.int32, device=self.device)
        self.flag_tensor.zero_()
        flag_handle = symm_mem.rendezvous(self.flag_tensor, name)
        self.flags = [flag_handle.get_buffer(p, self.flag_tensor.shape, torch.int32, 0).data_ptr() for p in range(P)]
        self.handles = (handle, flag_handle)
        torch.cuda.synchronize(self.device)
        dist.barrier(group=self.group)  # every rank's flags are zero before anyone writes one
        self.stream = torch.cuda.Stream(device=self.device)
        self.attended = [torch.cuda.Event() for _ in range(G)]

    def _flag(self, rank: int, row: int, source: int) -> int:
        """Address of rank ``rank``'s flag [row, source]."""
        return self.flags[rank] + 4 * (row * len(self.tokens) + source)

    def __call__(self, packed: Tensor, attend: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
        """packed [rounds, P, B, S_r, 3, h, D] (`pack_qkv`) -> attention output [B, S_r, P·rounds·h, D]."""
        wait, write = _stream_memory_ops()
        P, r, G, B = len(self.tokens), self.group.rank(), self.rounds, self.batch
        self.calls += 1
        n, done = self.calls, 2 * G  # done: the flag row "finished with its buffers"
        starts = [sum(self.tokens[:p]) for p in range(P)]
        mine, S_r = starts[r], self.tokens[r]
        order = [(r + i) % P for i in range(1, P + 1)]  # others first, each rank starting at a different peer
        main, side = torch.cuda.current_stream(self.device), self.stream
        side.wait_stream(main)  # packed is written; this rank is done with its buffers of call n - 1
        for p in order:  # ... and so is every other rank
            _driver_call(wait, side, self._flag(r, done, p), n - 1, _WAIT_GEQ)
        with torch.cuda.stream(side):
            for g in range(G):
                for p in order:
                    for b in range(B):
                        self.recv[p][g, b, mine:mine + S_r].copy_(packed[g, p, b])
                    _driver_call(write, side, self._flag(p, g, r), n, _WRITE_FENCED)
        result = torch.empty(B, S_r, P, G, self.heads, self.head_dim, dtype=self.dtype, device=self.device)
        back = self.back[r][:, :, :, :S_r].permute(0, 2, 3, 1, 4, 5)  # [rounds, B, S_r, P, h, D]

        def place(g: int) -> None:  # round g's outputs, once every rank's have landed, into the result
            for q in order:
                _driver_call(wait, main, self._flag(r, G + g, q), n, _WAIT_GEQ)
            result[:, :, :, g].copy_(back[g])

        outputs = []
        for g in range(G):
            for q in order:
                _driver_call(wait, main, self._flag(r, g, q), n, _WAIT_GEQ)
            x = self.recv[r][g]  # [B, S, 3, h, D]
            out = attend(x[:, :, 0], x[:, :, 1], x[:, :, 2])  # [B, S, h, D]
            outputs.append(out)  # alive until the side stream has sent it
            self.attended[g].record(main)
            side.wait_event(self.attended[g])
            with torch.cuda.stream(side):
                for p in order:
                    for b in range(B):
                        self.back[p][g, r, b, :self.tokens[p]].copy_(out[b, starts[p]:starts[p] + self.tokens[p]])
                    _driver_call(write, side, self._flag(p, G + g, r), n, _WRITE_FENCED)
            if g:  # the previous round's outputs have arrived while this round attended
                place(g - 1)
        place(G - 1)
        main.wait_stream(side)  # (keeps `outputs` alive until sent)
        for p in order:
            _driver_call(write, main, self._flag(p, done, r), n, _WRITE_FENCED)
        return result.view(B, S_r, P * G * self.heads, self.head_dim)


_exchanges: dict[tuple, _Exchange] = {}


def _exchange(group_name: str, tokens: list[int], packed: Tensor) -> _Exchange:
    G, P, B, _, _, h, D = packed.shape
    key = (group_name, tuple(tokens), G, B, h, D, packed.dtype, packed.device)
    if key not in _exchanges:
        group = dist.distributed_c10d._resolve_process_group(group_name)
        _exchanges[key] = _Exchange(group, list(tokens), G, B, h, D, packed.dtype, packed.device)
    return _exchanges[key]


@torch.library.custom_op("wclab::peer_attention", mutates_args=())
def peer_attention(packed: Tensor, tokens: list[int], group_name: str, backend: str) -> Tensor:
    """Ulysses attention over the ranks of process group ``group_name`` with copy-engine exchanges (module
    docstring): packed [rounds, P, B, S_r, 3, h, D] (`pack_qkv`), ``tokens`` every rank's token count, ``backend``
    the attention backend (`wclab.models.attention.BACKENDS`) -> [B, S_r, P·rounds·h, D]. A collective: every
    rank calls it."""
    attend = functools.partial(attention, backend=backend)
    return _exchange(group_name, tokens, packed)(packed.contiguous(), attend)


@peer_attention.register_fake
def _(packed: Tensor, tokens: list[int], group_name: str, backend: str) -> Tensor:
    G, P, B, S_r, _, h, D = packed.shape
    return packed.new_empty((B, S_r, P * G * h, D))


def free_buffers() -> None:
    """Drop every cached exchange (its symmetric buffers are freed once no call uses them)."""
    _exchanges.clear()


def attention_over_ranks(q: Tensor, k: Tensor, v: Tensor, tokens: list[int], group: dist.ProcessGroup,
                         rounds: int, backend: str) -> Tensor:
    """q, k, v [B, S_r, H, D] (this rank's tokens) -> [B, S_r, H, D]: attention over all ranks' tokens with
    ``backend``, in ``rounds`` head groups (see the module docstring). A collective: every rank calls it."""
    packed = pack_qkv(q, k, v, group.size(), rounds)
    return peer_attention(packed, list(tokens), group.group_name, backend)


