"""The GPU benchmark scripts run end to end at their --tiny size on the CPU and report every stage.

Only that they run and report consistent numbers is checked here; the GPU figures are in bench/RESULTS.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
DIT_STAGES = ["kernels", "eager_bias", "eager_nobias", "eager_rope32", "capture_eager", "capture_motion",
              "capture_concept", "compiled", "two_experts", "capture_compiled", "capture_motion_compiled",
              "capture_concept_compiled", "accuracy", "offload", "fp8", "step_cache"]


def run(script: str, out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--tiny", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bench_dit_tiny_runs_every_stage_without_errors(tmp_path):
    report = run("bench_dit.py", tmp_path / "dit.json", "--repeat", "1")
    stages = report["stages"]
    assert [s for s in DIT_STAGES if s not in stages] == []
    failed = {name: r["error"] for name, r in stages.items() if "error" in r or "skipped" in r}
    assert failed == {}
    assert stages["compiled"]["dynamo_graph_breaks"] == {}
    assert stages["compiled"]["error_vs_eager"]["max_rel"] < 1e-5  # float32 model: only RoPE rounding differs
    assert stages["offload"]["output_bitwise_equal_to_eager_rope32"] is True
    assert stages["capture_eager"]["attention_maps"]["output_bitwise_equal_to_eager_rope32"] is True
    assert stages["capture_eager"]["block0_maps_max_abs_diff_vs_hook_probs"] < 1e-5
    assert stages["capture_compiled"]["blocks_recorded"] == 2
    for name in ("capture_motion", "capture_motion_compiled"):
        for boxes in ("large_boxes", "small_boxes"):
            r = stages[name][boxes]
            assert r["blocks_recorded"] == 2 and r["query_rows"] > 0 and r["block0_row_sum_max_rel_err"] < 1e-5
    assert stages["capture_motion"]["large_boxes"]["output_bitwise_equal_to_rope32"] is True
    assert stages["capture_concept"]["output_bitwise_equal_to_rope32"] is True
    assert stages["capture_concept_compiled"]["blocks_recorded"] == 2
    assert report["summary"]["capture_motion_large_overhead_pct"] is not None
    assert (stages["step_cache"]["computed"], stages["step_cache"]["reused"]) == (4, 4)
    assert report["summary"]["compiled_s"] > 0 and report["env"]["torch"]


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory) -> tuple[dict, Path]:
    """(report, saved folder) of an adaptive-cache run that generated its exact reference (the default sampling,
    every forward computed) in the same process and saved its own result."""
    out = tmp_path_factory.mktemp("bench_e2e")
    saved = out / "saved"
    report = run("bench_e2e.py", out / "easy.json", "--steps", "8", "--cache", "adaptive",
                 "--cache-threshold", "1e9", "--reference-steps", "8", "--save-reference", str(saved))
    return report, saved


@pytest.mark.slow
def test_bench_e2e_tiny_runs_every_stage_all_steps_and_both_decodes(adaptive_run):
    report, saved = adaptive_run
    stages = report["stages"]
    assert {n: r.get("error") for n, r in stages.items() if "error" in r or "skipped" in r} == {}
    assert [n for n in ("build_encoders", "prepare", "decode_first", "build_experts", "denoise", "decode_final",
                        "save_reference", "reference") if n not in stages] == []
    assert stages["denoise"]["steps_run"] == 8 and stages["denoise"]["extrapolated"] is False
    assert stages["decode_final"]["video_shape"] == [17, 64, 96, 3]
    assert report["summary"]["total_s (compile excluded)"] > 0
    assert sorted(p.name for p in saved.iterdir()) == ["latents.pt", "setup.json", "video.npy"]


@pytest.mark.slow
def test_bench_e2e_tiny_reports_a_cached_run_against_its_in_process_reference(adaptive_run):
    cached, _ = adaptive_run
    assert cached["setup"]["step_cache"]["policy"] == "EasyCache" and cached["setup"]["steps"] == 8
    denoise = cached["stages"]["denoise"]
    assert denoise["forwards_reused"] > 0 and denoise["forwards_computed"] + denoise["forwards_reused"] == 16
    assert cached["stages"]["reference"]["in_process"] and cached["stages"]["reference"]["steps"] == 8
    deviation = cached["summary"]["deviation_vs_exact"]
    assert 0 < deviation["latents"]["mean_rel"] < 1 and 0 < deviation["video"]["mean_rel"] < 1


@pytest.mark.slow
def test_bench_e2e_tiny_reports_a_few_step_run_against_a_saved_reference(adaptive_run, tmp_path):
    """A 4-step distilled run with a fixed cache compares with the adaptive run's saved result."""
    _, saved = adaptive_run
    few = run("bench_e2e.py", tmp_path / "few.json", "--distilled", "--cache", "fixed", "--reference", str(saved))
    assert (few["setup"]["steps"], few["setup"]["cfg"], few["setup"]["step_list"]) == (4, 1.0, [1000, 750, 500, 250])
    assert few["stages"]["denoise"]["forwards_per_step"] == 1
    assert few["stages"]["denoise"]["reused_steps"] == [1, 3]  # every other step of each expert
    assert few["stages"]["reference"]["steps"] == 8 and few["stages"]["reference"]["step_cache"]["policy"] == "EasyCache"
    assert few["summary"]["deviation_vs_exact"]["latents"]["max_rel"] > 0
    assert few["summary"]["steps"] == 4 and few["summary"]["total_s (compile excluded)"] > 0


def test_steady_denoise_counts_the_compiling_first_step_as_a_full_step():
    sys.path.insert(0, str(BENCH))
    from bench_e2e import steady_denoise

    # StepCache pattern: full, cheap, full, cheap ...; the first step also compiled (+10 s)
    r = steady_denoise([15.0, 0.2, 5.0, 0.2, 5.0], ["high"] * 5, ["low", "low"])
    assert r["first_step_compile_s"] == 10.0
    assert r["denoise_steady_s"] == pytest.approx(5.0 + 10.4 + 2 * 2.6, abs=0.05)
    assert r["extrapolated"] is True


def test_bench_load_tiny_loads_the_experts_in_a_fresh_process(tmp_path):
    """Each stage is a fresh process (about 10 s of imports each on a CPU, so only "resident" here); the
    "offload" and "fp8" placements are the same stage with another ``experts=``, loaded in tests/test_loading.py."""
    report = run("bench_load.py", tmp_path / "load.json", "--only", "resident")
    result = report["stages"]["resident"]
    assert "error" not in result, result
    assert result["forward_finite"] and result["placement"] == "resident" and result["load_s"] > 0
    assert report["summary"]["load_s"] == report["stages"]["resident"]["load_s"]


def _a2a_row(env: dict, ms_1x4: float, ms_2x2: float) -> dict:
    cell = lambda ms: {"ms_per_forward": ms, "sent_gb_per_forward": 10.0, "gb_per_s": round(10.0 / ms * 1e3, 1)}  # noqa: E731
    return {"nccl_env": {"NCCL_NVLS_ENABLE": "0", "NCCL_VERSION": "2.28.3-1", **env}, "ranks": 4, "1x4 qkv": cell(ms_1x4),
            "1x4 q,k,v": cell(ms_1x4 + 1), "2x2 qkv": cell(ms_2x2), "2x2 q,k,v": cell(ms_2x2 + 1)}


@pytest.mark.parametrize("faster, chosen", [(0.9, "export NCCL_MIN_NCHANNELS=32\n"), (0.99, "")])
def test_all_to_all_table_keeps_an_nccl_setting_only_when_it_beats_the_defaults_by_two_percent(tmp_path, faster,
                                                                                                 chosen):
    rows = [_a2a_row({}, 38.0, 65.0), _a2a_row({"NCCL_MIN_NCHANNELS": "32"}, 38.0 * faster, 65.0 * faster),
            _a2a_row({"NCCL_P2P_NVL_CHUNKSIZE": "2097152"}, 40.0, 70.0)]
    (tmp_path / "a2a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    proc = subprocess.run([sys.executable, str(BENCH / "all_to_all.py"), "--table", str(tmp_path / "a2a.jsonl"),
                           "--best", str(tmp_path / "best.env")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| NCCL defaults | 38.0 (263.2) | 39.0" in proc.stdout
    assert (tmp_path / "best.env").read_text() == chosen


@pytest.mark.slow
def test_cli_runs_times_the_launcher_per_process_count_and_compares_with_the_first(tmp_path):
    """`bench/cli_runs.py --tiny`: the real `torchrun -m wclab.parallel generate` on 1 then 2 CPU processes."""
    proc = subprocess.run([sys.executable, str(BENCH / "cli_runs.py"), "--tiny", "--gpus", "1,2", "--steps", "2",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "cli_runs.json").read_text())
    one, two = report["runs"]["1"], report["runs"]["2"]
    for r in (one, two):
        assert r["returncode"] == 0 and r["wall_s"] > 0 and r["video_mb"] > 0
        assert set(r["stages_s"]) == {"load", "prepare", "denoise", "decode"}
        assert sum(r["stages_s"].values()) < r["wall_s"]
    # 2 processes split the CFG branches (cfg-parallel auto), which computes each branch exactly as one process
    assert two["vs_1proc"] == {"max_rel_err": 0.0, "mean_rel_err": 0.0, "bitwise_equal": True}
    assert report["setup"]["process_counts"] == [1, 2] and report["setup"]["steps"] == 2


def test_cli_runs_reads_the_launchers_stage_line():
    sys.path.insert(0, str(BENCH))
    from cli_runs import parse_stages

    out = ("wrote v.mp4 (9 frames, 64x112, 2 ranks)\n"
           "stages (rank 0): load 41.20 s, prepare 1.05 s, denoise 80.12 s, decode 1.90 s\n")
    assert parse_stages(out) == {"load": 41.2, "prepare": 1.05, "denoise": 80.12, "decode": 1.9}
    assert parse_stages("no such line") == {}


@pytest.mark.slow
def test_parallel_scaling_tiny_times_both_sequence_attentions_and_tabulates_them(tmp_path):
    """`bench/parallel_scaling.py --tiny` on 2 CPU processes, once per engine: each split forward equals the
    unsplit one (float32) and the table names the engine."""
    from conftest import free_port

    out = tmp_path / "scaling.jsonl"
    for engine in ("ulysses", "kv_gather"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), str(BENCH / "parallel_scaling.py"), "--tiny",
               "--sequence-attention", engine, "--out", str(out)]
        if engine == "kv_gather":  # profiled too: the table, the trace beside it and (no GPU kernels) no timeline
            cmd += ["--profile", str(tmp_path / "profile.txt"), "--rested", "0.2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sequence_attention"] for r in runs] == ["ulysses", "kv_gather"]
    assert all(r["ranks"] == 2 and r["check_max_rel_err"] < 1e-5 for r in runs)
    assert "profile" not in runs[0] and runs[1]["profile"]["timeline"] == {"kernels": 0}
    assert "rested" not in runs[0] and runs[1]["rested"]["after_idle_s"] == 0.2 and runs[1]["rested"]["median_s"] > 0
    assert runs[1]["profile"]["device_s_by_kind"]["other"] > 0
    assert (tmp_path / "profile.txt").exists() and (tmp_path / "profile.txt.trace.json.gz").stat().st_size > 0
    table = subprocess.run([sys.executable, str(BENCH / "parallel_scaling.py"), "--table", str(out)],
                           capture_output=True, text=True, timeout=60).stdout
    assert "| 2 | eager, sdpa, ulysses |" in table and "| 2 | eager, sdpa, kv_gather |" in table


def test_gpu_state_reads_nvidia_smis_clocks_and_names_what_holds_the_clock_down():
    sys.path.insert(0, str(BENCH))
    from benchlib import parse_gpu_state

    text = "0, 1980, 1980, 41, 698.12, 0x0000000000000000\n1, 1215, 1980, 87, 701.50, 0x0000000000000024\n" \
           "2, 345, 1980, 30, [N/A], 0x0000000000000001\n"
    gpus = parse_gpu_state(text)
    assert gpus[0] == {"gpu": 0, "sm_mhz": 1980.0, "max_sm_mhz": 1980.0, "temperature_c": 41.0, "power_w": 698.12,
                       "clock_reasons": []}
    assert gpus[1]["clock_reasons"] == ["software power cap", "software thermal slowdown"]
    assert gpus[2]["power_w"] is None and gpus[2]["clock_reasons"] == ["idle"]


def test_gpu_watch_reports_each_gpus_lowest_clock_and_every_reason_but_idle(monkeypatch):
    sys.path.insert(0, str(BENCH))
    import benchlib

    def state(sm0, sm1, reasons1):
        return [{"gpu": 0, "sm_mhz": sm0, "max_sm_mhz": 1980.0, "temperature_c": 50.0, "power_w": 600.0,
                 "clock_reasons": ["idle"]},
                {"gpu": 1, "sm_mhz": sm1, "max_sm_mhz": 1980.0, "temperature_c": 85.0, "power_w": 700.0,
                 "clock_reasons": reasons1}]

    states = iter([state(1980.0, 1980.0, []), state(1980.0, 1410.0, ["hardware thermal slowdown"])])
    monkeypatch.setattr(benchlib, "gpu_state", lambda: next(states))
    with benchlib.GpuWatch(interval_s=3600) as watch:  # one sample as the block starts, one as it ends
        pass
    gpu0, gpu1 = watch.summary()
    assert gpu0["samples"] == 2 and gpu0["min_sm_mhz"] == 1980.0 and gpu0["clock_reasons"] == []
    assert gpu1["min_sm_mhz"] == 1410.0 and gpu1["median_sm_mhz"] == 1695.0
    assert gpu1["clock_reasons"] == ["hardware thermal slowdown"] and gpu1["max_temperature_c"] == 85.0

    from parallel_scaling import lowest_clock

    assert lowest_clock(watch.summary()) == "1410 / 1980 MHz (hardware thermal slowdown)"
    assert lowest_clock([]) == "-"  # no nvidia-smi (the CPU)

    # watching only the GPUs that do the work: an idle one beside them is not "the lowest clock"
    states = iter([state(1980.0, 345.0, ["idle"])] * 2)
    with benchlib.GpuWatch(gpus=[0], interval_s=3600) as watch:
        pass
    assert [g["gpu"] for g in watch.summary()] == [0] and lowest_clock(watch.summary()) == "1980 / 1980 MHz"

    monkeypatch.setattr(benchlib, "gpu_state", lambda: pytest.fail("a watch of no GPUs asked nvidia-smi"))
    with benchlib.GpuWatch(gpus=[], interval_s=3600) as watch:  # a rank that does not report
        pass
    assert watch.summary() == []


def test_used_gpus_follows_cuda_visible_devices(monkeypatch):
    sys.path.insert(0, str(BENCH))
    from benchlib import used_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert used_gpus(2) == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert used_gpus(1) == [2] and used_gpus(2) == [2, 3]


def test_gemm_rows_tiny_times_each_split_row_count_against_the_whole_sequence(tmp_path):
    """`bench/gemm_rows.py --tiny`: the block's GEMMs at S = 60 rows, at S / P and padded, in both layouts (q, k, v
    separate or fused), each as P · t(S / P) / t(S)."""
    report = run("gemm_rows.py", tmp_path / "gemm.json", "--ranks", "2,4", "--repeat", "2")
    rows = report["rows"]
    assert [(r["rows"], r["ranks"], r["how"], r["kernel"]) for r in rows] == [
        (60, 1, "one rank", "cublas"), (30, 2, "split", "cublas"), (64, 2, "padded to 64", "cublas"),
        (15, 4, "split", "cublas"), (64, 4, "padded to 64", "cublas")]
    base = rows[0]["forward_ms"]
    blocks = report["setup"]["blocks"]
    for r in rows:
        ms = r["ms"]
        assert set(ms) == {"dim_x_dim", "qkv", "ffn_up", "ffn_down"} and all(t > 0 for t in ms.values())
        assert r["forward_ms"]["separate"] == pytest.approx(
            blocks * (6 * ms["dim_x_dim"] + ms["ffn_up"] + ms["ffn_down"]), rel=1e-3)
        assert r["forward_ms"]["qkv_fused"] == pytest.approx(
            blocks * (ms["qkv"] + 3 * ms["dim_x_dim"] + ms["ffn_up"] + ms["ffn_down"]), rel=1e-3)
        for layout in ("separate", "qkv_fused"):
            assert r["ratio_vs_one"][layout] == pytest.approx(r["ranks"] * r["forward_ms"][layout] / base[layout],
                                                              rel=1e-2, abs=1e-3)


@pytest.mark.slow
def test_gemm_rows_autotune_times_inductors_pick_at_the_whole_and_the_split_row_counts(tmp_path):
    """`--autotune`: Inductor's max-autotune pick per shape beside the eager GEMMs, at S and at S / P (not padded),
    its ratio taken against the autotuned S."""
    report = run("gemm_rows.py", tmp_path / "gemm.json", "--ranks", "4", "--repeat", "2", "--autotune")
    rows = {(r["rows"], r["how"], r["kernel"]): r for r in report["rows"]}
    assert list(rows) == [(60, "one rank", "cublas"), (60, "one rank", "max_autotune"), (15, "split", "cublas"),
                          (15, "split", "max_autotune"), (64, "padded to 64", "cublas")]
    tuned_one, tuned_split = rows[60, "one rank", "max_autotune"], rows[15, "split", "max_autotune"]
    assert tuned_one["ratio_vs_one"] == {"separate": 1.0, "qkv_fused": 1.0}
    for layout in ("separate", "qkv_fused"):
        assert tuned_split["ratio_vs_one"][layout] == pytest.approx(
            4 * tuned_split["forward_ms"][layout] / tuned_one["forward_ms"][layout], rel=1e-2, abs=1e-3)


def test_timed_reports_how_long_the_host_took_to_issue_each_call_besides_the_whole_call():
    sys.path.insert(0, str(BENCH))
    from benchlib import timed

    calls = []

    def fn():
        time.sleep(0.02)
        calls.append(1)
        return len(calls)

    stats, last = timed(fn, repeat=3, warmup=1)
    assert last == 4 and len(stats["runs_s"]) == 3
    assert 0.02 <= stats["issue_median_s"] <= stats["median_s"] + 1e-3  # on the CPU the call is all host time


def test_kernel_timeline_splits_the_span_into_exposed_exchanges_overlap_compute_and_idle_and_names_the_waits():
    sys.path.insert(0, str(BENCH))
    from benchlib import kernel_timeline

    def kernel(name, ts, dur, cat="kernel"):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    trace = {"traceEvents": [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1000},  # host side: not counted
        kernel("gemm_a", 0, 100),
        kernel("ncclDevKernel_SendRecv", 60, 80),   # 60-100 beside gemm_a, 100-140 alone
        kernel("flash_fwd", 150, 100),              # 140-150 idle: after nccl, before flash
        kernel("memcpy DtoD", 250, 10, cat="gpu_memcpy"),
        kernel("gemm_b", 300, 50),                  # 260-300 idle
        kernel("flash_fwd", 355, 45),               # 350-355 idle
        kernel("gemm_b", 400, 50),
    ]}
    t = kernel_timeline(trace)
    assert t["kernels"] == 7
    assert t["span_s"] == pytest.approx(450e-6)
    assert t["overlap_s"] == pytest.approx(40e-6)
    assert t["collective_only_s"] == pytest.approx(40e-6)
    assert t["idle_s"] == pytest.approx(55e-6)
    assert t["compute_only_s"] == pytest.approx(450e-6 - 40e-6 - 40e-6 - 55e-6)
    assert [(g["after"], g["before"], g["count"]) for g in t["gaps"]] == [
        ("memcpy DtoD", "gemm_b", 1), ("ncclDevKernel_SendRecv", "flash_fwd", 1), ("gemm_b", "flash_fwd", 1)]
    assert [g["s"] for g in t["gaps"]] == pytest.approx([40e-6, 10e-6, 5e-6])
    assert kernel_timeline({"traceEvents": []}) == {"kernels": 0}


def test_parallel_scaling_table_shows_a_profiled_runs_exposed_exchange_and_idle_time(tmp_path):
    sys.path.insert(0, str(BENCH))
    from parallel_scaling import table

    def run(ranks, seconds, **extra):
        return {"ranks": ranks, "height": 480, "width": 832, "frames": 81, "tokens": 32760, "compile": True,
                "attention": "flash4", "sequence_attention": "ulysses", "split": {"median_s": seconds},
                "split_memory": {"peak_allocated_gib": 28.0}, **extra}

    timeline = {"kernels": 1603, "collective_only_s": 0.0386, "idle_s": 0.0059}
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        run(1, 2.6, unsplit={"median_s": 2.6}), run(4, 0.65, profile={"timeline": timeline}),
        run(4, 0.625, nccl_window={"gib": 2.3, "segments": 2}))))
    rows = table(path).splitlines()
    assert rows[0].endswith("| profiled: exposed exchange / idle (ms) |")
    assert rows[3].startswith("| 1 | compiled, flash4 |") and rows[3].endswith("| - |")
    assert rows[4].startswith("| 4 | compiled, flash4, ulysses |") and "| 4.00x |" in rows[4]
    assert rows[4].endswith("| 38.6 / 5.9 |")
    assert rows[5].startswith("| 4 | compiled, flash4, ulysses, NCCL window |") and "| 4.16x |" in rows[5]
    assert all(row.count("|") == rows[0].count("|") for row in rows)
