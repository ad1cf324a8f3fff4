"""Make docs/tour.gif from a real run of notebooks/01_tour.ipynb.

    python docs/make_tour_gif.py [--profile tiny] [--out docs/tour.gif]

Executes the tour notebook top to bottom in a fresh kernel (with ``WCLAB_PROFILE`` set), then runs one more
cell in the same kernel that saves the notebook's last side-by-side video (``tour``: the conditions on the
start image | the generated video with the trajectories drawn over it), enlarged ``--zoom`` times, as a
looping GIF. With the tiny profile the generated half is noise (random weights): the GIF shows the pipeline.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny", help="WCLAB_PROFILE for the run (tiny, released, ci)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "tour.gif")
    parser.add_argument("--zoom", type=int, default=2, help="pixel repetition factor")
    parser.add_argument("--fps", type=float, default=8)
    args = parser.parse_args(argv)

    notebook = REPO / "notebooks" / "01_tour.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    out = args.out.resolve()
    nb.cells.append(new_code_cell(
        "from wclab.inspect import save_video\n"
        f"save_video(tour.repeat({args.zoom}, axis=1).repeat({args.zoom}, axis=2), {str(out)!r}, fps={args.fps})"))
    env = dict(os.environ, WCLAB_PROFILE=args.profile, MPLBACKEND="module://matplotlib_inline.backend_inline")
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute(env=env)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) from a {args.profile!r} run of {notebook.name}")
    return out


if __name__ == "__main__":
    main()
