"""Run notebooks headless top to bottom under a profile and record what each one took and shows.

    WCLAB_CHECKPOINTS=/disk/ckpt python bench/run_notebooks.py --profile gpu --gpus 0,1,2,3 --out bench/out/nb
    python bench/run_notebooks.py --profile ci --out bench/out/nb_ci               # tiny models on the CPU

Each notebook runs in a fresh python3 kernel (nbclient) with ``WCLAB_PROFILE`` set; with ``--gpus`` the notebooks
are spread over the listed GPUs, one notebook per GPU at a time (``CUDA_VISIBLE_DEVICES``), and each GPU's used
memory is sampled every 0.5 s with ``nvidia-smi`` (peak over the notebook's run, whole device); ``--gpus all`` runs
them one at a time with every GPU visible (so cells that use several GPUs run) and reports each GPU's peak. Per
notebook the report (``notebooks.json`` in ``--out``) has the wall time, the peak GPU memory, the executed file's
size, the number of figures and inline videos it shows, the largest output, and the first error if any. ``--keep`` also
saves the executed notebooks.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PeakSampler, gpu_memory_used_mib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT = 900  # seconds for one cell


def execute(path: Path, profile: str, env: Optional[dict] = None,
            cell_timeout: int = CELL_TIMEOUT) -> tuple[nbformat.NotebookNode, float, Optional[str]]:
    """Run ``path`` in a fresh python3 kernel (working directory: its folder) with ``WCLAB_PROFILE=profile``.
    Returns the executed notebook, its seconds, and the first error (None when every cell ran)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    full_env = dict(os.environ, WCLAB_PROFILE=profile, MPLBACKEND="module://matplotlib_inline.backend_inline",
                    **(env or {}))
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start, error = time.perf_counter(), None
    try:
        client.execute(env=full_env)
    except CellExecutionError as e:
        error = str(e)[-3000:]
    return nb, time.perf_counter() - start, error


def shown(nb: nbformat.NotebookNode) -> dict:
    """What an executed notebook shows: figures (PNG outputs), inline videos (``<video`` elements), tables
    (HTML tables), widgets, error outputs, and the largest output in bytes."""
    counts = {"figures": 0, "videos": 0, "tables": 0, "widgets": 0, "errors": 0, "largest_output_bytes": 0}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                counts["errors"] += 1
            data = out.get("data", {})
            counts["figures"] += "image/png" in data
            html = data.get("text/html", "")
            html = "".join(html) if isinstance(html, list) else html
            counts["videos"] += html.count("<video")
            counts["tables"] += html.count("<table")
            counts["widgets"] += "application/vnd.jupyter.widget-view+json" in data
            counts["largest_output_bytes"] = max(counts["largest_output_bytes"], len(json.dumps(out)))
    return counts


def run_one(path: Path, profile: str, gpu: Optional[int], out_dir: Path, keep: bool, every_gpu: bool) -> dict:
    """Run one notebook on GPU ``gpu`` alone (CUDA_VISIBLE_DEVICES), with every GPU visible (``every_gpu``), or
    on no GPU (gpu None)."""
    env = {"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}
    sampled = every_gpu or gpu is not None
    monitor = PeakSampler(lambda: gpu_memory_used_mib(None if every_gpu else gpu) if sampled else {}, 0.5)
    with monitor:
        nb, seconds, error = execute(path, profile, env)
    executed = out_dir / path.name
    nbformat.write(nb, executed)
    size = executed.stat().st_size
    if not keep:
        executed.unlink()
    peaks = {k: round(v / 1024, 2) for k, v in monitor.peak.items()}
    return {"notebook": path.name, "profile": profile, "gpu": "all" if every_gpu else gpu, "seconds": round(seconds, 1),
            "gpu_peak_used_gib": (peaks or None) if every_gpu else peaks.get(f"gpu{gpu}"),
            "executed_file_mb": round(size / 1e6, 2), **shown(nb), "error": error}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/0*.ipynb")
    p.add_argument("--profile", default="ci")
    p.add_argument("--gpus", default="", help="comma-separated GPU indices to spread notebooks over, one GPU "
                   "each; 'all': one notebook at a time with every GPU visible (the multi-GPU cells run)")
    p.add_argument("--out", type=Path, default=Path("bench/out/notebooks"))
    p.add_argument("--keep", action="store_true", help="also save the executed notebooks")
    args = p.parse_args()
    paths = args.notebooks or sorted(NOTEBOOKS.glob("0*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    every_gpu = args.gpus == "all"
    gpus = [None] if every_gpu else [int(g) for g in args.gpus.split(",") if g.strip()] or [None]
    todo: queue.Queue = queue.Queue()
    for path in paths:
        todo.put(path)
    results, lock = [], threading.Lock()
    report_path = args.out / "notebooks.json"

    def worker(gpu: Optional[int]) -> None:
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            print(f"{path.name}: started (gpu {gpu})", flush=True)
            result = run_one(path, args.profile, gpu, args.out, args.keep, every_gpu)
            print(json.dumps({k: v for k, v in result.items() if k != "error"}), flush=True)
            if result["error"]:
                print(f"{path.name}: ERROR\n{result['error'][-1500:]}", flush=True)
            with lock:
                results.append(result)
                report_path.write_text(json.dumps(sorted(results, key=lambda r: r["notebook"]), indent=1))

    threads = [threading.Thread(target=worker, args=(g,)) for g in gpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r["notebook"] for r in results if r["error"]]
    print(f"{len(results) - len(failed)} of {len(results)} notebooks ran" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
