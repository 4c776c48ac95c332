"""No import cycle anywhere in setflow/: the module graph (top-level and function-level imports) is acyclic."""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1] / "setflow"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (functions included).

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module, else of ``a.b``;
    importing ``a.b`` also runs ``a/__init__``, so it is an edge to ``a`` as well (except from inside ``a``).
    """
    package = root.name
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                if t != package and not t.startswith(package + "."):
                    continue
                while t and t not in modules:  # `import setflow.a.b.attr` style: the nearest module
                    t = t.rpartition(".")[0]
                parts = t.split(".")
                for i in range(2, len(parts) + 1):  # the parent packages' __init__ run too
                    parent = ".".join(parts[:i])
                    if parent != name and not name.startswith(parent + ".") and parent in modules:
                        edges.add(parent)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_setflow() -> None:
    graph = import_graph()
    assert "setflow.nn.fast.kernels" in graph and len(graph) > 30
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_fast_path_is_fenced() -> None:
    """setflow.nn.fast never imports the set transformer (imports point one way)."""
    graph = import_graph()
    assert "setflow.nn.fast" in graph["setflow.nn.set_transformer"]
    for name, edges in graph.items():
        if name.startswith("setflow.nn.fast"):
            assert "setflow.nn.set_transformer" not in edges and "setflow.nn" not in edges, (name, edges)


def test_the_cycle_check_catches_cycles(tmp_path: Path) -> None:
    pkg = tmp_path / "setflow"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from setflow.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")  # function-level, relative
    (pkg / "c.py").write_text("import setflow.a\n")
    graph = import_graph(pkg)
    assert graph["setflow.a"] >= {"setflow.sub", "setflow.sub.b"} and graph["setflow.sub.b"] == {"setflow.c"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"setflow.a", "setflow.sub.b", "setflow.c"}
    (pkg / "c.py").write_text("x = 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_the_check_sees_the_old_fused_kernels_cycle(tmp_path: Path) -> None:
    """The cycle this layout removed (kernels -> fused private helper, fused -> kernels) is caught."""
    pkg = tmp_path / "setflow"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fused.py").write_text("from setflow import kernels\n")
    (pkg / "kernels.py").write_text("def f():\n    from setflow.fused import _keep_levels\n")
    assert find_cycle(import_graph(pkg)) is not None
