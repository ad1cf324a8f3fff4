"""Imports only go down the layers, and no modules import each other in a circle.

Layers, bottom to top: shared basics (errors, sizes, image) → conditions → encode → models → sampler → inspect →
front ends and tools (cli, demo, parallel, workers, profile, testing, checkpoints, widgets). Every import statement
counts, also those inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["base", "conditions", "encode", "models", "sampler", "inspect", "front"]
FRONT_ENDS = {"wclab.cli", "wclab.demo", "wclab.parallel", "wclab.push_attention", "wclab.workers", "wclab.profile",
              "wclab.testing", "wclab.checkpoints"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    if module.startswith("widgets") or module in FRONT_ENDS:
        return LAYERS.index("front")
    part = module.split(".")[1] if module.count(".") else ""
    return LAYERS.index(part) if part in LAYERS else LAYERS.index("base")


def project_modules() -> dict[str, Path]:
    files = [*(REPO / "wclab").rglob("*.py"), *(REPO / "widgets").rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports (``from a import b`` counts as a.b when that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != module}
    return out


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(m, p, set(modules)) for m, p in modules.items()}


def test_every_module_imports_only_from_its_own_or_lower_layers():
    upward = [f"{m} ({LAYERS[layer_of(m)]}) imports {d} ({LAYERS[layer_of(d)]})"
              for m, deps in sorted(graph().items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if d.startswith(m + "."):  # a package's __init__ importing its own modules is not a cycle
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_layer_map_knows_every_package():
    assert layer_of("wclab.encode.bias") < layer_of("wclab.models.text_encoder") < layer_of("wclab.sampler")
    assert layer_of("wclab.models.loading") < layer_of("wclab.checkpoints") == layer_of("widgets.segmenter")
    assert layer_of("wclab.sizes") == layer_of("wclab.errors") == 0
    assert {m.split(".")[1] for m in project_modules() if m.startswith("wclab.") and m.count(".") >= 1} <= \
        {"conditions", "encode", "models", "sampler", "inspect", "cli", "demo", "parallel", "workers", "profile",
         "testing", "checkpoints", "errors", "sizes", "image", "colors", "push_attention"}
