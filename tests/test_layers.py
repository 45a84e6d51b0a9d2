"""Layers point down: the library never imports its wrappers, nothing imports in a circle, MLflow stays
in the registry package. Walks the source of every module (module-level and function-level imports)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"sora": ROOT / "sora", "sora_components": ROOT / "components", "sora_pipelines": ROOT / "pipelines",
            "sora_serving": ROOT / "serving"}
WRAPPERS = ("sora_components", "sora_pipelines", "sora_serving")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            rel = path.relative_to(directory).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                if not path.name == "__init__.py":
                    pkg = pkg[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
        for name in names:
            found.append((name, node.lineno, id(node) in top))
    return found


def _graph():
    modules = _modules()
    known = set(modules)
    return modules, {m: _imports(p, m, known) for m, p in modules.items()}


def test_the_library_never_imports_its_wrappers():
    _, graph = _graph()
    bad = []
    for module, imports in graph.items():
        if not module.startswith("sora.") and module != "sora":
            continue
        for name, line, top in imports:
            if name.split(".")[0] in WRAPPERS:
                # only the CLI may reach the pipeline and service packages, and only lazily (inside a command)
                if module.startswith("sora.cli") and not top:
                    continue
                bad.append(f"{module}:{line} imports {name}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_mlflow_is_imported_only_by_the_registry_package():
    _, graph = _graph()
    bad = [f"{m}:{line}" for m, imports in graph.items() for name, line, _ in imports
           if name.split(".")[0] == "mlflow" and m.startswith("sora") and not m.startswith("sora.registry")
           and m.split(".")[0] == "sora"]
    assert not bad, "mlflow imported outside sora.registry: " + ", ".join(bad)


def test_no_import_cycles():
    modules, graph = _graph()
    edges = {m: sorted({n for n, _, _ in imports if n in modules and n != m}) for m, imports in graph.items()}
    # a package's __init__ importing its own submodules (re-exports) is not a cycle with them
    for m in edges:
        edges[m] = [n for n in edges[m] if not (n.startswith(m + ".") and modules[m].name == "__init__.py")
                    or m == "sora"]
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = [0]

    def strongconnect(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_walker_sees_the_layers():
    """Guards the guard: the walk finds the CLI's lazy imports of the wrappers and the registry's MLflow."""
    _, graph = _graph()
    cli_wrappers = {n.split(".")[0] for m, imports in graph.items() if m.startswith("sora.cli")
                    for n, _, _ in imports}
    assert {"sora_pipelines", "sora_serving"} & cli_wrappers
    assert any(n.startswith("mlflow") for n, _, _ in graph["sora.registry"])
