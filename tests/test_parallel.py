"""Sequence-parallel DiT (wclab.parallel) on 2, 3 and 4 CPU processes (torchrun, gloo) equals the single-process run.

One torchrun launch of 2 ranks runs every scenario (process start-up dominates the cost), one of 3 ranks the DiT
forward with tokens and heads that do not divide evenly, one of 4 ranks an odd token count with one head per rank:
this file is also the worker script (``__main__``); each rank saves its results, and the tests compare them with
the same computation done here in one process, with the tiny fixture DiT (4 heads, 2 blocks) and the golden
``units`` inputs.

Tolerance (float32): rtol = atol = 1e-5. Splitting can change only float rounding (linear layers over fewer rows
and attention over a subset of heads may take other blocked kernels); on the 2-core CI CPU every compared tensor
was bitwise equal.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import FIXTURES, REPO, TINY_MODELS, TOKENIZER, finish, free_port, load_golden, subprocess_env
from wclab.models.dit import DiT

pytestmark = pytest.mark.slow  # gloo process groups on the CPU

WORLD = 2
TIMEOUT_S = 300
PARITY = dict(rtol=1e-5, atol=1e-5)
CHECKPOINT = TINY_MODELS / "dit_high_tiny.safetensors"
ODD_GRID = (3, 3, 5)  # 45 tokens: ranks hold 23 and 22
UNEVEN_GRID = (2, 2, 5)  # 20 tokens over 3 ranks: 7, 7 and 6 (and the 4 heads: 2, 1 and 1)
SESSION_SIZE = (80, 112, 9)  # H, W pixels, frames -> token grid (3, 5, 7) = 105 tokens: 53 and 52


def units() -> dict:
    _, t = load_golden("units")
    return dict(x=t["dit_in_x53"], timestep=t["dit_timestep"], context=t["t5_out"], bias=t["dit_bias"])


def odd_inputs(u: dict, grid: tuple[int, int, int] = ODD_GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """The units inputs cropped to token ``grid`` (F', h, w): ODD_GRID gives x [1, 53, 3, 6, 10], bias [1, 1, 45, L]."""
    f, h, w = grid
    x = u["x"][:, :, :f, : 2 * h, : 2 * w]
    bias = u["bias"].reshape(1, 1, 3, 4, 6, -1)[:, :, :f, :h, :w].reshape(1, 1, f * h * w, -1)
    return x, bias


def batched_inputs(u: dict) -> tuple[torch.Tensor, ...]:
    """A batch of two different odd-grid inputs (the second mirrored, another timestep): x, timestep, context, bias."""
    x, bias = odd_inputs(u)
    return (torch.cat([x, x.flip(-1)]), torch.cat([u["timestep"], u["timestep"] * 0.5]),
            u["context"].expand(2, -1, -1), bias.expand(2, -1, -1, -1))


def small_session():
    """A 2-step session on synth_small resized to SESSION_SIZE (seed 0, CFG 5, β 30), not stepped."""
    from wclab.conditions import load_json
    from wclab.conditions.resize import resize_scene
    from wclab.image import solid_image
    from wclab.models.loading import load_models
    from wclab.sampler import Session

    h, w, frames = SESSION_SIZE
    models = load_models(TINY_MODELS, tokenizer=TOKENIZER, preview=False)
    scene = resize_scene(load_json(FIXTURES / "synth_small.json"), h, w, frames)
    return Session(models, scene, solid_image(h, w, (90, 120, 150)), steps=2, seed=0, progress=False)


def tiled_vae(vae) -> dict[str, torch.Tensor]:
    """Tiled decode and encode with small tiles (2 x 3 tiles of the 10 x 14 latent grid) on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 3, 10, 14, generator=g)
    video = torch.rand(1, 3, 9, 80, 112, generator=g) * 2 - 1
    tiles = dict(tiled=True, tile_size=(6, 8), tile_stride=(4, 6))
    return {"vae_decode": vae.decode(z, **tiles), "vae_encode": vae.encode(video, **tiles)}


def session_run(session) -> dict[str, torch.Tensor]:
    """Run with per-object and per-word attention maps; the final latents and each step's running sums."""
    from wclab.inspect import AttentionMaps
    from wclab.parallel import ParallelDiT, gather_attention_maps

    with AttentionMaps(session, words=True) as maps:
        session.run()
    if isinstance(session.models.high, ParallelDiT):
        gather_attention_maps(maps)
    return {"latents": session.latents, **{f"maps_step{i}": s for i, s in maps.sums.items()}}


def collective_calls(model, *inputs) -> torch.Tensor:
    """[all-to-all calls, flat all-gather calls] during one forward of ``model`` (``all_gather_single``, called
    ``all_gather_into_tensor`` before torch 2.13)."""
    import torch.distributed as dist

    counts = [0, 0]
    names = {"all_to_all_single": 0, "all_gather_single": 1, "all_gather_into_tensor": 1}
    originals = {name: getattr(dist, name) for name in names if hasattr(dist, name)}

    def counting(name, fn):
        def call(*args, **kwargs):
            counts[names[name]] += 1
            return fn(*args, **kwargs)
        return call

    for name, fn in originals.items():
        setattr(dist, name, counting(name, fn))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return torch.tensor(counts)


def all_to_all_ops(model, *inputs) -> torch.Tensor:
    """[``wclab::all_to_all_equal`` calls, calls of torch's ``all_to_all_single`` op (traced code's all-to-all,
    with split sizes)] during one forward of ``model``, as the profiler records them."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(*inputs)
    names = [event.name for event in prof.events()]
    return torch.tensor([names.count("wclab::all_to_all_equal"), names.count("_c10d_functional::all_to_all_single")])


# ---------------------------------------------------------------- the 2-rank run (this file as a torchrun worker)

def worker(out_dir: Path) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from wclab.models.fast import speed_up
    from wclab.parallel import (ParallelDiT, gather_tokens, init_distributed, parallelize_models, shutdown,
                                token_slice)

    mesh = init_distributed()
    u = units()
    model = ParallelDiT(DiT.from_checkpoint(CHECKPOINT, num_heads=4), mesh)
    res = {}
    with torch.no_grad():
        res["biased"] = model(u["x"], u["timestep"], u["context"], u["bias"])
        res["unbiased"] = model(u["x"], u["timestep"], u["context"])
        x_odd, bias_odd = odd_inputs(u)
        res["odd"] = model(x_odd, u["timestep"], u["context"], bias_odd)
        res["batched"] = model(*batched_inputs(u))
        _, cache = model.run_with_cache(u["x"], u["timestep"], u["context"], u["bias"],
                                        names_filter=["blocks.1.hook_out", "blocks.0.cross_attn.hook_bias"])
        res["block1_out_local"] = cache["blocks.1.hook_out"]
        res["block1_out_gathered"] = gather_tokens(cache["blocks.1.hook_out"], 72)
        res["bias_local"] = cache["blocks.0.cross_attn.hook_bias"]
        res["odd_slice"] = torch.tensor([token_slice(45).start, token_slice(45).stop])
        res["collective_calls"] = collective_calls(model, x_odd, u["timestep"], u["context"], bias_odd)
        ulysses = ParallelDiT(model.model, mesh, sequence_attention="ulysses")
        res["odd_ulysses"] = ulysses(x_odd, u["timestep"], u["context"], bias_odd)
        res["batched_ulysses"] = ulysses(*batched_inputs(u))
        res["biased_ulysses"] = ulysses(u["x"], u["timestep"], u["context"], u["bias"])  # 72 tokens: equal runs
        res["collective_calls_ulysses"] = collective_calls(ulysses, x_odd, u["timestep"], u["context"], bias_odd)
        compiled = ParallelDiT(speed_up(DiT.from_checkpoint(CHECKPOINT, num_heads=4)), mesh,
                               sequence_attention="ulysses")
        unbiased = (u["x"], u["timestep"], u["context"])  # 72 tokens: equal runs
        res["unbiased_ulysses_compiled"] = compiled(*unbiased)
        res["all_to_all_ops_compiled"] = all_to_all_ops(compiled, *unbiased)
        from torch._inductor.lowering import lowerings
        res["all_to_all_lowered_as_collective"] = torch.tensor(torch.ops.wclab.all_to_all_equal in lowerings)
        bf16 = ParallelDiT(DiT.from_checkpoint(CHECKPOINT, num_heads=4, dtype=torch.bfloat16), mesh)
        res["bf16"] = bf16(u["x"], u["timestep"], u["context"], u["bias"]).float()
    session = small_session()
    session.models = parallelize_models(session.models, mesh)
    res.update({f"session_{k}": v for k, v in session_run(session).items()})
    res.update(tiled_vae(session.models.vae))
    save_file({k: v.contiguous() for k, v in res.items()}, str(out_dir / f"rank{dist.get_rank()}.safetensors"))
    dist.barrier()  # every rank done before any tears gloo down (as `wclab.parallel generate` does)
    shutdown()
    assert not dist.is_initialized()


def uneven_worker(out_dir: Path, grid: tuple[int, int, int] = UNEVEN_GRID) -> None:
    """The 3-rank launch (and the 4-rank one): the biased forward on ``grid``, Ulysses and the k / v gather."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from wclab.parallel import ParallelDiT, init_distributed, token_slice

    model = ParallelDiT(DiT.from_checkpoint(CHECKPOINT, num_heads=4), init_distributed())
    u = units()
    x, bias = odd_inputs(u, grid)
    with torch.no_grad():
        res = {"uneven": model(x, u["timestep"], u["context"], bias)}
    res["collective_calls"] = collective_calls(model, x, u["timestep"], u["context"], bias)
    gather = ParallelDiT(model.model, model.mesh, sequence_attention="kv_gather")
    with torch.no_grad():
        res["uneven_kv_gather"] = gather(x, u["timestep"], u["context"], bias)
    res["collective_calls_kv_gather"] = collective_calls(gather, x, u["timestep"], u["context"], bias)
    n = grid[0] * grid[1] * grid[2]
    res["uneven_slice"] = torch.tensor([token_slice(n).start, token_slice(n).stop])
    save_file(res, str(out_dir / f"rank{dist.get_rank()}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


def launch(out: Path, world: int, *args: str) -> subprocess.Popen:
    """torchrun of this file with ``world`` ranks, in the background."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(world),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), __file__, str(out), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The torchrun launch, started in the background: (process, output folder)."""
    out = tmp_path_factory.mktemp("parallel")
    proc = launch(out, WORLD)
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def ranks(launched, single) -> list[dict[str, torch.Tensor]]:
    """Each rank's saved results (``single`` is computed while the ranks run)."""
    from safetensors.torch import load_file

    proc, out = launched
    finish(proc, f"torchrun with {WORLD} ranks", TIMEOUT_S)
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict[str, torch.Tensor]:
    """The same computations in this process, without torch.distributed."""
    u = units()
    model = DiT.from_checkpoint(CHECKPOINT, num_heads=4)
    with torch.no_grad():
        x_odd, bias_odd = odd_inputs(u)
        _, cache = model.run_with_cache(u["x"], u["timestep"], u["context"], u["bias"],
                                        names_filter=["blocks.1.hook_out"])
        bf16 = DiT.from_checkpoint(CHECKPOINT, num_heads=4, dtype=torch.bfloat16)
        res = dict(biased=model(u["x"], u["timestep"], u["context"], u["bias"]),
                   unbiased=model(u["x"], u["timestep"], u["context"]),
                   odd=model(x_odd, u["timestep"], u["context"], bias_odd),
                   batched=model(*batched_inputs(u)),
                   block1_out=cache["blocks.1.hook_out"],
                   bf16=bf16(u["x"], u["timestep"], u["context"], u["bias"]).float())
    session = small_session()
    res.update({f"session_{k}": v for k, v in session_run(session).items()})
    res.update(tiled_vae(session.models.vae))
    return res


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("case", ["biased", "unbiased", "odd", "batched"])
def test_every_rank_returns_the_single_process_output(ranks, single, case):
    for r in ranks:
        torch.testing.assert_close(r[case], single[case], **PARITY)
    assert torch.equal(ranks[0][case], ranks[1][case])  # all-gathered: identical on every rank


def test_biased_output_matches_the_reference_golden(ranks):
    _, t = load_golden("units")
    torch.testing.assert_close(ranks[0]["biased"], t["dit_out_masked"], **PARITY)


def test_odd_token_count_splits_like_torch_chunk(ranks):
    assert ranks[0]["odd_slice"].tolist() == [0, 23] and ranks[1]["odd_slice"].tolist() == [23, 45]


def test_two_ranks_gather_keys_and_values_instead_of_resharding_by_all_to_all(ranks):
    """Per block one all-gather of k and one of v (the 2 blocks: 4), no all-to-all; the head's gather is a list
    all-gather, not counted."""
    assert all(r["collective_calls"].tolist() == [0, 4] for r in ranks)


def test_ulysses_asked_for_on_two_ranks_reshards_by_all_to_all_and_equals_one_process(ranks, single):
    for r in ranks:
        assert r["collective_calls_ulysses"].tolist() == [8, 0]
        torch.testing.assert_close(r["odd_ulysses"], single["odd"], **PARITY)
        torch.testing.assert_close(r["batched_ulysses"], single["batched"], **PARITY)  # batch 2: sent rank-major
        torch.testing.assert_close(r["biased_ulysses"], single["biased"], **PARITY)  # no split sizes sent


def test_compiled_ulysses_sends_equal_runs_without_split_sizes_and_equals_one_process(ranks, single):
    """In compiled blocks (Inductor) equal runs still reach NCCL's own AllToAll (`all_to_all_equal`), not torch's
    traced all-to-all, which always passes split sizes; compiled float32 math (float32 RoPE) within 1e-4."""
    for r in ranks:
        assert r["all_to_all_ops_compiled"].tolist() == [8, 0]  # 2 blocks x (q, k, v, output)
        assert r["all_to_all_lowered_as_collective"]  # its send buffer kept from reuse until the wait
        torch.testing.assert_close(r["unbiased_ulysses_compiled"], single["unbiased"], rtol=1e-4, atol=1e-4)


def test_equal_runs_are_exchanged_without_split_sizes_uneven_ones_with_them(monkeypatch):
    """Equal runs go to `all_to_all_equal` (NCCL's own AllToAll, which has a copy-engine path), uneven ones to
    grouped sends (torch's all-to-all with split sizes)."""
    import wclab.parallel as parallel

    calls = []

    def fake_all_to_all_single(recv, send, recv_splits=None, send_splits=None, group=None):
        calls.append((recv_splits, send_splits))
        recv.copy_(send)

    def fake_all_to_all_equal(send, group_name):
        calls.append(("equal", group_name))
        return send.clone()
    monkeypatch.setattr(parallel.dist, "all_to_all_single", fake_all_to_all_single)
    monkeypatch.setattr(parallel, "all_to_all_equal", fake_all_to_all_equal)
    group = SimpleNamespace(group_name="7")
    send = torch.arange(6.0)
    assert parallel._all_to_all(send, [3, 3], [3, 3], group).tolist() == send.tolist()
    assert parallel._all_to_all(send, [4, 2], [4, 2], group).tolist() == send.tolist()
    assert calls == [("equal", "7"), ([4, 2], [4, 2])]


def test_the_nccl_window_is_used_only_where_every_rank_allocates_alike():
    from wclab.parallel import window_eligible

    assert window_eligible(32760, 40, 4, hooks_active=False)
    assert not window_eligible(32760, 40, 4, hooks_active=True)  # a hook may keep tensors on some ranks only
    assert not window_eligible(45, 4, 2, hooks_active=False)  # 23 and 22 tokens
    assert not window_eligible(60, 4, 3, hooks_active=False)  # 2, 1 and 1 heads
    assert not window_eligible(32760, 40, 1, hooks_active=False)  # nothing is exchanged


def test_the_nccl_window_is_a_quarter_larger_than_the_probed_forwards_pool_in_whole_64_mib():
    from wclab.parallel import window_size

    gib = 2 ** 30
    assert window_size(8 * gib) == 10 * gib
    assert window_size(9 * gib + 1) == 11.25 * gib + 2 ** 26  # rounded up


def test_a_pool_is_measured_by_its_large_segments_only():
    """The caching allocator's 2 MiB segments of small blocks do not count (neither toward the window's size
    nor toward an overflow of it)."""
    from wclab.parallel import pool_bytes

    small = {"total_size": 2 ** 21}
    assert pool_bytes([{"total_size": 8 * 2 ** 30}, {"total_size": 2 ** 28}, small, small]) == 8 * 2 ** 30 + 2 ** 28
    assert pool_bytes([small]) == 0 and pool_bytes([]) == 0


def test_both_experts_share_one_nccl_window_per_sequence_group_and_gpu():
    from wclab.parallel import shared_window, shutdown

    seq_a, seq_b, gpu0, gpu1 = object(), object(), torch.device("cuda", 0), torch.device("cuda", 1)
    try:
        high, low = shared_window(seq_a, gpu0), shared_window(seq_a, gpu0)
        assert high is low and high.pool is None and high.probe is None  # probed at its first forward, not before
        assert shared_window(seq_b, gpu0) is not high and shared_window(seq_a, gpu1) is not high
    finally:
        shutdown()  # forgets them (no process group here)
    assert shared_window(seq_a, gpu0) is not high
    shutdown()


def test_an_nccl_window_off_nccl_or_before_nccl_2_27_is_refused_naming_what_it_got(monkeypatch):
    import wclab.parallel as parallel

    class GlooMesh:  # a 1-D mesh of two CPU ranks, enough for the constructor
        ndim, device_type = 1, "cpu"

        def size(self):
            return 2

        def get_group(self):
            return "gloo group"

    monkeypatch.setattr(parallel.dist, "get_backend", lambda group=None: "gloo")
    with pytest.raises(parallel.ParallelError, match="nccl_window: needs the NCCL backend on CUDA devices, got 'gloo'"):
        parallel.ParallelDiT(DiT.from_checkpoint(CHECKPOINT, num_heads=4), GlooMesh(), nccl_window=True)

    GlooMesh.device_type = "cuda"  # now an NCCL mesh on GPUs, but with an NCCL before symmetric windows
    monkeypatch.setattr(parallel.dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(parallel.torch.cuda.nccl, "version", lambda: (2, 21, 5))
    with pytest.raises(parallel.ParallelError, match=r"nccl_window: needs NCCL >= 2.27 .* has NCCL 2.21.5"):
        parallel.ParallelDiT(DiT.from_checkpoint(CHECKPOINT, num_heads=4), GlooMesh(), nccl_window=True)


def test_an_unknown_sequence_attention_is_refused_naming_the_choices():
    from wclab.parallel import ParallelDiT, ParallelError

    class OneRank:  # a 1-D mesh of one rank, enough for the constructor
        ndim = 1

        def size(self):
            return 1

    with pytest.raises(ParallelError, match=r"sequence_attention: expected one of \('auto', 'ulysses', 'kv_gather', "
                                            r"'ulysses_push'\)"):
        ParallelDiT(DiT.from_checkpoint(CHECKPOINT, num_heads=4), OneRank(), sequence_attention="ring")


def test_the_push_engine_runs_only_forwards_it_can_compute_whole():
    from wclab.models.dit import rope_cos_sin, rope_freqs
    from wclab.models.fast import quantize_fp8
    from wclab.parallel import push_eligible

    model = DiT.from_checkpoint(CHECKPOINT, num_heads=4)  # 4 heads
    head_dim = model.cfg.head_dim
    real, complex_ = rope_cos_sin(head_dim, (1, 2, 4)), rope_freqs(head_dim, (1, 2, 4))
    assert push_eligible(model, 8, 2, hooks_active=False, freqs=real)
    assert push_eligible(model, 8, 4, hooks_active=False, freqs=real)
    assert not push_eligible(model, 8, 2, hooks_active=True, freqs=real)  # a hook inside would be skipped
    assert not push_eligible(model, 8, 2, hooks_active=False, freqs=complex_)  # the uncompiled float64 RoPE
    assert not push_eligible(model, 9, 2, hooks_active=False, freqs=real)  # tokens not dividing evenly
    assert not push_eligible(model, 24, 3, hooks_active=False, freqs=real)  # 4 heads over 3 ranks
    assert not push_eligible(quantize_fp8(model), 8, 2, hooks_active=False, freqs=real)  # float8 projections


def test_the_push_engine_on_a_cpu_mesh_is_refused_naming_cuda():
    from wclab.parallel import ParallelDiT, ParallelError

    class OneCpuRank:
        ndim, device_type = 1, "cpu"

        def size(self):
            return 1

    with pytest.raises(ParallelError, match="'ulysses_push' needs CUDA devices, got 'cpu'"):
        ParallelDiT(DiT.from_checkpoint(CHECKPOINT, num_heads=4), OneCpuRank(), sequence_attention="ulysses_push")


def test_block_hooks_see_this_ranks_tokens_and_bias_rows(ranks, single):
    full_bias = units()["bias"]
    for r, rows in zip(ranks, (slice(0, 36), slice(36, 72))):
        torch.testing.assert_close(r["block1_out_local"], single["block1_out"][:, rows], **PARITY)
        assert torch.equal(r["bias_local"], full_bias[:, :, rows])
        torch.testing.assert_close(r["block1_out_gathered"], single["block1_out"], **PARITY)


def test_bfloat16_parallel_output_stays_within_bfloat16_noise_of_one_process(ranks, single):
    """bf16 rounds each op to 8 mantissa bits; the split changes which roundings happen: within 1% of range."""
    ref = single["bf16"]
    assert (ranks[0]["bf16"] - ref).abs().max() < 0.01 * ref.abs().max()


def test_session_with_attention_maps_matches_one_process_at_an_odd_token_count(ranks, single):
    """Two steps (high then low expert, CFG), per-object and per-word maps: latents and gathered running sums
    [R, 105] match; Euler steps and CFG amplify rounding, hence rtol = atol = 1e-4 on the latents."""
    steps = sorted(k for k in single if k.startswith("session_maps_step"))
    assert steps == ["session_maps_step0", "session_maps_step1"]
    for r in ranks:
        torch.testing.assert_close(r["session_latents"], single["session_latents"], rtol=1e-4, atol=1e-4)
        for k in steps:
            assert r[k].shape == single[k].shape and single[k].shape[1] == 105
            torch.testing.assert_close(r[k], single[k], **PARITY)


@pytest.mark.parametrize("op", ["vae_decode", "vae_encode"])
def test_tiled_vae_spread_over_ranks_equals_one_process_bitwise(ranks, single, op):
    """`ParallelVAE`: each rank runs every other tile, all ranks blend all tiles in the same order."""
    for r in ranks:
        assert torch.equal(r[op], single[op])


def test_three_ranks_split_tokens_and_heads_unevenly_and_equal_one_process(ranks, tmp_path):
    """20 tokens over 3 ranks (7, 7, 6) and the 4 heads (2, 1, 1); started after the 2-rank launch finished."""
    from safetensors.torch import load_file

    proc = launch(tmp_path, 3, "--uneven")
    finish(proc, "torchrun with 3 ranks", TIMEOUT_S)
    got = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(3)]
    u = units()
    x, bias = odd_inputs(u, UNEVEN_GRID)
    with torch.no_grad():
        expected = DiT.from_checkpoint(CHECKPOINT, num_heads=4)(x, u["timestep"], u["context"], bias)
    assert [r["uneven_slice"].tolist() for r in got] == [[0, 7], [7, 14], [14, 20]]
    # Ulysses: q, k, v and the output resharded by one all-to-all each, in each of the 2 blocks
    assert all(r["collective_calls"].tolist() == [8, 0] for r in got)
    # asked for on 3 ranks, the k / v gather (the last rank's 6 tokens padded to 7) gives the same output
    for r in got:
        torch.testing.assert_close(r["uneven_kv_gather"], expected, **PARITY)
        assert r["collective_calls_kv_gather"].tolist() == [0, 4]
    for r in got:
        torch.testing.assert_close(r["uneven"], expected, **PARITY)


def test_four_ranks_split_an_odd_token_count_one_head_each_and_equal_one_process(ranks, tmp_path):
    """45 tokens over 4 ranks (12, 12, 12, 9), the 4 heads one per rank (Ulysses' even-heads send buffer), and the
    k / v gather asked for on 4 ranks; started after the 2-rank launch finished."""
    from safetensors.torch import load_file

    proc = launch(tmp_path, 4, "--four")
    finish(proc, "torchrun with 4 ranks", TIMEOUT_S)
    got = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(4)]
    u = units()
    x, bias = odd_inputs(u)
    with torch.no_grad():
        expected = DiT.from_checkpoint(CHECKPOINT, num_heads=4)(x, u["timestep"], u["context"], bias)
    assert [r["uneven_slice"].tolist() for r in got] == [[0, 12], [12, 24], [24, 36], [36, 45]]
    for r in got:
        assert r["collective_calls"].tolist() == [8, 0] and r["collective_calls_kv_gather"].tolist() == [0, 4]
        torch.testing.assert_close(r["uneven"], expected, **PARITY)
        torch.testing.assert_close(r["uneven_kv_gather"], expected, **PARITY)


def test_without_a_process_group_parallel_dit_raises_naming_torchrun(monkeypatch):
    from wclab.parallel import ParallelDiT, ParallelError, init_distributed

    with pytest.raises(ParallelError, match="torchrun"):
        ParallelDiT(DiT.from_checkpoint(CHECKPOINT, num_heads=4))
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ParallelError, match=r"\['RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'\]|MASTER_PORT"):
        init_distributed()


if __name__ == "__main__":
    if sys.argv[2:] == ["--uneven"]:
        uneven_worker(Path(sys.argv[1]))
    elif sys.argv[2:] == ["--four"]:
        uneven_worker(Path(sys.argv[1]), ODD_GRID)
    else:
        worker(Path(sys.argv[1]))
