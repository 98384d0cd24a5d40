"""The package's architecture, checked: greenprune's import graph (every import, at module level or inside a
function, read with `ast`) has no cycle between modules nor between subpackages, and the flow reads from the
folder list: no stage imports a later one."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"greenprune": ROOT / "greenprune", "greenprune.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, base in SOURCES.items():
        for f in sorted(base.rglob("*.py")):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = f
    return mods


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node) -> list[str]:
    """The greenprune modules an import statement names (a `from X import y` names X.y where that is a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = importer if _is_package(importer) else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                pkg = pkg.rpartition(".")[0]
            base = f"{pkg}.{base}" if base else pkg
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for n in names:
        while n and n not in MODULES:  # `import greenprune.x.y` of something that is not a module: its owner
            n = n.rpartition(".")[0]
        if n and n != importer:
            out.append(n)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(_resolve(name, node))
        graph[name] = deps
    return graph


def unit(module: str) -> str:
    """The unit of the architecture a module belongs to: its subpackage of greenprune, or itself when it is a
    top-level module; greenprune.kernels is one unit."""
    parts = module.split(".")
    if len(parts) >= 2 and f"greenprune.{parts[1]}" in MODULES and _is_package(f"greenprune.{parts[1]}"):
        return f"greenprune.{parts[1]}"
    return module


def _cycle(graph: dict[str, set[str]]):
    """One cycle of the graph as a list of nodes, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_real_imports():
    """The reader resolves relative, absolute and function-level imports (a check that cannot pass vacuously)."""
    g = import_graph()
    assert "greenprune.planning.plan" in g["greenprune.pruning.prune"]
    assert "greenprune.families" in g["greenprune.planning.plan"]
    assert "greenprune.kernels.dispatch" in g["greenprune.deploy.gpu_results"]
    assert len(g) > 60 and sum(map(len, g.values())) > 200


def test_no_import_cycle_between_modules():
    cycle = _cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_between_subpackages():
    graph: dict[str, set[str]] = {}
    for a, deps in import_graph().items():
        graph.setdefault(unit(a), set()).update(unit(b) for b in deps if unit(b) != unit(a))
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


# The stages in the order data flows through them; a stage may import earlier ones only.
FLOW = ["errors", "_version", "_ext", "kernels", "runinfo", "families", "modelio", "data", "scoring", "planning",
        "pruning", "evaluation", "recovery", "search", "deploy", "jobs", "cli"]


def test_stages_import_only_earlier_stages():
    index = {f"greenprune.{s}": i for i, s in enumerate(FLOW)}
    late = []
    for a, deps in import_graph().items():
        ua = unit(a)
        for b in deps:
            ub = unit(b)
            if ua in index and ub in index and index[ub] > index[ua]:
                late.append(f"{a} imports {b}")
    assert not late, late


@pytest.mark.parametrize("sub", sorted(s for s in FLOW if (ROOT / "greenprune" / s).is_dir()))
def test_readme_layout_names_every_subpackage(sub):
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    assert f"greenprune/{sub}/" in layout
