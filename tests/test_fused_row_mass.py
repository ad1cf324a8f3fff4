"""The fused Triton kernels of QueryRowMass (motion maps) give the float32 chunked computation's numbers.

Triton compiles only for GPUs; on a CPU machine these tests run the same kernels in Triton's interpreter
(``TRITON_INTERPRET=1``, in a subprocess because Triton reads it when the kernels are defined). The interpreter
has no bfloat16, so on the CPU the inputs are float16 (the kernels treat both alike: tensor-core products
accumulated in float32).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels are written in Triton (in the test extra)")

CASES = textwrap.dedent("""
    import json, sys
    import torch
    from wclab.inspect import fused_row_mass
    from wclab.inspect.motion_maps import QueryRowMass, _query_row_mass

    device = torch.device(sys.argv[1])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    g = torch.Generator().manual_seed(0)
    report = {}
    # S not a multiple of the key tile; a row in two groups; an empty group; a group over several row tiles
    B, S, H, D = 2, 300, 3, 32
    q = (2 * torch.randn(B, S, H, D, generator=g)).to(device, dtype)
    k = (2 * torch.randn(B, S, H, D, generator=g)).to(device, dtype)
    rows = torch.tensor([3, 5, 7, 40, 41, 42, 43, 100, 101, 250, 299] + list(range(150, 170)))
    sel = torch.zeros(4, len(rows))
    sel[0, :3] = 1; sel[1, 2:7] = 1; sel[3, 7:] = 1
    rows, sel = rows.to(device), sel.to(device)
    for heads in (None, [0, 2]):
        fused = QueryRowMass("fused")(q, k, rows, sel, heads=heads)
        chunked = QueryRowMass("torch")(q, k, rows, sel, heads=heads, compile=False)
        hs = list(range(H)) if heads is None else heads
        explicit = _query_row_mass(q[:, rows][:, :, hs].float(), k[:, :, hs].float(), sel.float(), len(hs), len(rows))
        report[str(heads)] = dict(
            shape=list(fused.shape), dtype=str(fused.dtype),
            vs_chunked=float((fused - chunked).abs().max()), vs_explicit=float((fused - explicit).abs().max()),
            scale=float(chunked.abs().max()),
            row_sums=(fused.sum(1) / (B * len(hs))).tolist(), group_rows=sel.sum(1).tolist())
    grouped = fused_row_mass.GroupedRows.from_selector(rows.cpu(), sel.cpu())
    report["layout"] = dict(rows=grouped.tokens.numel(), tiles=grouped.tile_group.tolist(),
                            valid=int(grouped.valid.sum()))
    print(json.dumps(report))
""")


def run_cases() -> dict:
    import json

    if torch.cuda.is_available():
        args, env = ["cuda"], dict(os.environ)
    else:
        args, env = ["cpu"], dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", CASES, *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report() -> dict:
    return run_cases()


@pytest.mark.parametrize("heads", ["None", "[0, 2]"])
def test_fused_mass_equals_float32_logits_in_chunks(report, heads):
    r = report[heads]
    assert r["shape"] == [4, 300] and r["dtype"] == "torch.float32"
    assert r["vs_chunked"] <= 2e-5 * r["scale"]
    assert r["vs_explicit"] <= 2e-5 * r["scale"]


@pytest.mark.parametrize("heads", ["None", "[0, 2]"])
def test_every_row_is_a_distribution_and_padding_adds_nothing(report, heads):
    """Each group's mass sums to its rows per (batch, head); the empty group gets exactly 0."""
    r = report[heads]
    torch.testing.assert_close(torch.tensor(r["row_sums"]), torch.tensor(r["group_rows"]), rtol=1e-5, atol=1e-5)
    assert r["row_sums"][2] == 0.0


def test_rows_are_laid_out_group_by_group_in_whole_tiles(report):
    from wclab.inspect.fused_row_mass import GROUP_TILE

    layout = report["layout"]
    # groups of 3, 5 (row 7 again), 0 and 24 rows -> 1, 1, 0 and 2 tiles of 16
    assert GROUP_TILE == 16 and layout["tiles"] == [0, 1, 3, 3]
    assert layout["rows"] == 4 * 16 and layout["valid"] == 3 + 5 + 24


def test_fused_needs_half_precision_on_a_triton_device():
    from wclab.inspect.attention import InspectError
    from wclab.inspect.motion_maps import QueryRowMass

    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(InspectError, match="bf16/fp16"):
        QueryRowMass("fused")(q, q, torch.tensor([1]), torch.ones(1, 1))
    with pytest.raises(InspectError, match="kernel"):
        QueryRowMass("triton")
    assert not QueryRowMass().uses_fused(q)  # auto on a float32 CPU model: the chunked float32 path
