"""The layout's rules, read from the source (no import runs): which package may import which, the
torch-free folders, and no import circle. docs/architecture.md explains the layout."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("alignedvq", "cloud_server", "common", "edge_agent")
# The offline toolkit: what the two processes must never import.
OFFLINE = ("alignedvq.cli", "alignedvq.demo", "alignedvq.server_process", "alignedvq.edge_export",
           "alignedvq.extras", "alignedvq.protogen", "alignedvq.cli_reference", "alignedvq.data",
           "alignedvq.evaluation", "alignedvq.training", "alignedvq.benchmarks", "tests")
HEAVY = ("torch", "transformers", "safetensors", "vllm", "torchvision")
# What the ONNX edge and the health check run: they must import none of HEAVY.
TORCH_FREE = ("common.wire", "common.imaging", "common.paths", "common._runtime.fast_exit",
              "alignedvq.v1", "edge_agent.cli", "edge_agent.client", "edge_agent.retry",
              "edge_agent.encoder", "edge_agent.onnx_edge", "edge_agent.clip_preprocess",
              "edge_agent.edge_spec", "cloud_server.healthcheck")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "models" not in p.relative_to(ROOT).parts}


MODULES = _modules()


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules a file imports; ``top_level_only``: only what runs at import time (not inside
    functions, where a lazy import is a deliberate choice)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # imports under a module-level try/if still run at import time
        nodes = [n for top in tree.body for n in ast.walk(top)
                 if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        nodes += [n for top in tree.body if isinstance(top, ast.ClassDef) for n in top.body]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _project(name: str) -> str | None:
    """The project module an import names (``from a.b import c`` may name module a.b.c)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_module_these_rules_name_exists():
    """A renamed module must not drop silently out of the rules."""
    missing = [name for name in (*OFFLINE, *TORCH_FREE) if name != "tests"
               and name not in MODULES]
    assert not missing, missing


def test_the_four_packages_and_nothing_else_at_the_top():
    tops = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert tops == set(PACKAGES), tops


@pytest.mark.parametrize("runtime", ["common", "edge_agent", "cloud_server", "alignedvq.v1"])
def test_the_runtime_imports_no_offline_code(runtime):
    offenders = {f"{m} -> {i}" for m, p in MODULES.items() if _under(m, [runtime])
                 for i in _imports(p, top_level_only=False) if _under(i, OFFLINE)}
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("half,other", [("edge_agent", "cloud_server"),
                                        ("cloud_server", "edge_agent"),
                                        ("common", "edge_agent"), ("common", "cloud_server")])
def test_the_halves_share_only_common(half, other):
    offenders = {f"{m} -> {i}" for m, p in MODULES.items() if _under(m, [half])
                 for i in _imports(p, top_level_only=False) if _under(i, [other])}
    assert not offenders, sorted(offenders)


def _import_time_closure(start: str) -> dict[str, str]:
    """Every module importing ``start`` loads (top-level imports, followed through the project,
    parent packages included), each mapped to the module that pulled it in."""
    seen, todo = {start: ""}, [start]
    while todo:
        mod = todo.pop()
        parents = [".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)]
        for imported in [*parents, *_imports(MODULES[mod], top_level_only=True)]:
            target = _project(imported) or imported
            if target not in seen:
                seen[target] = mod
                if target in MODULES:
                    todo.append(target)
    return seen


@pytest.mark.parametrize("start", [m for m in MODULES if _under(m, TORCH_FREE)])
def test_the_torch_free_modules_stay_torch_free(start):
    closure = _import_time_closure(start)
    heavy = {f"{name} (via {closure[name]})" for name in closure if _under(name, HEAVY)}
    assert not heavy, sorted(heavy)


def test_no_import_circle():
    graph = {m: {t for i in _imports(p, top_level_only=True) if (t := _project(i)) and t != m
                 and not m.startswith(t + ".")}  # a module's own parent package is no edge
             for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import circle: " + " -> ".join(cycle))
