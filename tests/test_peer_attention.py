"""The copy-engine Ulysses attention (wclab.peer_attention, ``sequence_attention="ulysses_p2p"``).

On the CPU: the packing that decides what each rank receives, and the refusal where there is no CUDA. With 2 or
more GPUs this file is also a torchrun worker (``__main__``): every rank runs the engine with 1 and 2 head rounds,
batch 1 and 2, tokens that do not divide evenly, and compares it with the NCCL Ulysses engine of `wclab.parallel`.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, finish, free_port, subprocess_env
from wclab.peer_attention import PeerAttentionError, check_peer_attention, pack_qkv


def test_pack_puts_rank_p_round_g_heads_of_q_k_v_in_run_g_p():
    B, S_r, P, G, h, D = 2, 5, 2, 3, 2, 4
    q, k, v = (torch.randn(B, S_r, P * G * h, D) for _ in range(3))
    packed = pack_qkv(q, k, v, ranks=P, rounds=G)
    assert packed.shape == (G, P, B, S_r, 3, h, D) and packed.is_contiguous()
    for g in range(G):
        for p in range(P):
            heads = slice(p * G * h + g * h, p * G * h + (g + 1) * h)  # rank p holds heads p·H/P ... (p+1)·H/P
            for i, t in enumerate((q, k, v)):
                assert torch.equal(packed[g, p, :, :, i], t[:, :, heads])


def test_the_engine_is_refused_without_cuda_or_with_heads_that_do_not_split_into_rounds():
    with pytest.raises(PeerAttentionError, match="needs CUDA devices"):
        check_peer_attention(torch.device("cpu"), [4, 4], rounds=2)
    with pytest.raises(PeerAttentionError, match=r"divisible by rounds=3; heads per rank: \[4, 4\]"):
        check_peer_attention(torch.device("cuda", 0), [4, 4], rounds=3)
    with pytest.raises(PeerAttentionError, match=r"same number of heads on every rank.*\[2, 1, 1\]"):
        check_peer_attention(torch.device("cuda", 0), [2, 1, 1], rounds=1)


def test_parallel_dit_refuses_the_engine_on_the_cpu_naming_what_it_needs():
    from wclab.models.dit import DiT, DiTConfig
    from wclab.parallel import ParallelDiT

    class TwoRanks:  # a 1-D mesh of two ranks, enough for the constructor
        ndim = 1

        def size(self):
            return 2

    model = DiT.from_config(DiTConfig(dim=32, ffn_dim=64, freq_dim=32, text_dim=16, in_dim=20, out_dim=8,
                                      num_heads=4, num_layers=1), device="cpu", dtype=torch.float32)
    with pytest.raises(PeerAttentionError, match="ulysses_p2p attention needs CUDA devices"):
        ParallelDiT(model, TwoRanks(), sequence_attention="ulysses_p2p")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_on_two_gpus_the_engine_equals_the_nccl_ulysses_engine(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(free_port()), str(Path(__file__).resolve()), str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    finish(proc, "2-GPU torchrun", timeout_s=300)
    for rank in range(2):
        for case, (got, want) in torch.load(tmp_path / f"rank{rank}.pt", weights_only=True).items():
            assert torch.equal(got, want), f"rank {rank}, {case}: max |diff| {(got - want).abs().max()}"


def _worker(out: Path) -> None:
    import os

    import torch.distributed as dist

    from wclab.parallel import _heads_to_tokens, _tokens_to_heads, split_counts
    from wclab.peer_attention import attention_over_ranks

    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, world, group = dist.get_rank(), dist.get_world_size(), dist.group.WORLD
    H, D, S = 8, 64, 301  # 151 + 150 tokens
    tokens, heads = split_counts(S, world, balanced=False), split_counts(H, world, balanced=True)
    g = torch.Generator(device="cuda").manual_seed(rank)
    results = {}
    for batch in (1, 2):
        q, k, v = (torch.randn(batch, tokens[rank], H, D, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(3))
        split = [_tokens_to_heads(t, tokens, heads, rank, group) for t in (q, k, v)]
        want = _heads_to_tokens(torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in split)).transpose(1, 2), tokens, heads, rank, group)
        for rounds in (1, 2):
            for call in range(2):  # the second call reuses the buffers (the flags of call 1 must not let it race)
                got = attention_over_ranks(q, k, v, tokens, group, rounds, "sdpa")
                results[f"batch {batch}, {rounds} rounds, call {call}"] = (got.cpu(), want.cpu())
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
