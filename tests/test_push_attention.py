"""The push engine (`wclab.push_attention`): its kernels put every rank's rows where NCCL's Ulysses would, normalised
and rotated as the DiT does (checked in Triton's CPU interpreter, tests/interpreted_push_kernels.py), and it
refuses what it cannot split."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wclab.push_attention import PushAttentionError, check_push

HERE = Path(__file__).resolve().parent


def test_the_kernels_store_each_rank_s_rows_where_ulysses_puts_them_in_triton_s_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(HERE / "interpreted_push_kernels.py")], env=env, capture_output=True, text=True,
                         cwd=HERE.parent, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "5 passed" in run.stdout


def test_the_push_engine_needs_cuda_and_an_even_split_and_says_so():
    with pytest.raises(PushAttentionError, match="needs CUDA devices"):
        check_push(torch.device("cpu"), 32, 4, 2)
    with pytest.raises(PushAttentionError, match="divisible by the 4 ranks, got 30 tokens and 8 heads"):
        check_push(torch.device("cuda", 0), 30, 8, 4)
