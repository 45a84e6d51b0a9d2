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


# ------------------------------------------------------------------ the stage packages (issue 34)
#: Allowed directions between sora's packages, lowest first: a module may import its own package and any
#: package listed before its own, never one listed after it (except :data:`UPWARD`).
LAYERS = [
    ("sora", "sora.config"),  # the package root (version only) and the configuration every stage reads
    ("sora.data",),  # contract, fetch, validation, drift, split, protocols, storage, snapshots
    ("sora.model",),  # text, graph, item–item and transition heads, network, SASRec, the Recommender artifact
    ("sora.training",),  # prep, loop, selection, device, checkpoint, the train_model facade
    ("sora.evaluation",),  # metrics, model vs baselines, plots, the promotion rule
    ("sora.registry",),  # MLflow: log, register, compare, promote
    ("sora.serving",),  # the request path: serving core, items add, batch scoring
    ("sora.stages", "sora.cluster"),  # the one entry the wrappers call; what each step asks of a cluster
    ("sora.cli",),  # the edge: may import anything, and the wrappers lazily
]
#: (importing module or package, imported module) -> why this upward import is allowed.
#: Remove an entry once its import is gone (a test fails on entries that no longer match anything).
UPWARD = {
    ("sora.data.split", "sora.model.itemsim"): "Split.matrix builds the interaction matrix with itemsim's "
                                               "helper (lazy)",
    ("sora.training", "sora.evaluation.metrics"): "early stopping and selection rank with the metrics "
                                                  "evaluation defines",
}
#: What the wrappers (components/, pipelines/, serving/) may import from sora: the stage entry first.
WRAPPER_ENTRIES = ("sora.stages", "sora.cluster", "sora.config", "sora.registry", "sora.serving")
#: (wrapper module, sora module) imported around the entries today; each is to go through sora.stages.
#: Exact: a new bypass fails, and so does an entry that is no longer needed.
WRAPPER_BYPASSES = {
    ("sora_components", "sora.data.snapshot"),
    ("sora_components", "sora.training.checkpoint"),
    ("sora_pipelines.trainjob", "sora.data.storage"),
    ("sora_pipelines.trainjob", "sora.evaluation.plots"),
    ("sora_pipelines.trainjob", "sora.model.recommender"),
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer(module: str) -> int | None:
    """Index in :data:`LAYERS` of a ``sora`` module, or None when no layer holds it."""
    if module == "sora":
        return 0
    found = [(len(p), i) for i, names in enumerate(LAYERS) for p in names if p != "sora" and _within(module, p)]
    return max(found)[1] if found else None


def _targets(imports: list[tuple[str, int, bool]]) -> list[tuple[str, int, bool]]:
    """The modules an import statement reaches: ``from sora.data import storage`` reaches sora.data.storage
    (the package itself only when nothing below it is named on that line)."""
    return [(n, line, top) for n, line, top in imports
            if not any(o.startswith(n + ".") and ol == line for o, ol, _ in imports)]


def test_every_module_is_in_a_stage_package():
    """A module added at the top of sora/ (or in a new package) is put in its stage first."""
    modules, _ = _graph()
    loose = sorted(m for m in modules if _within(m, "sora") and _layer(m) is None)
    assert not loose, f"modules in no layer of LAYERS (move them into a stage package): {loose}"


def test_imports_point_down_the_stage_packages():
    modules, graph = _graph()
    bad, used = [], set()
    for module, imports in graph.items():
        if not _within(module, "sora"):
            continue
        for name, line, _ in _targets(imports):
            if name not in modules or not _within(name, "sora") or _layer(name) <= _layer(module):
                continue
            allowed = [k for k in UPWARD if _within(module, k[0]) and _within(name, k[1])]
            used.update(allowed)
            if not allowed:
                bad.append(f"{module}:{line} imports {name} ({LAYERS[_layer(name)][0]} is above "
                           f"{LAYERS[_layer(module)][0]})")
    assert not bad, "imports against the stage directions:\n" + "\n".join(bad)
    assert not set(UPWARD) - used, f"UPWARD entries no longer needed: {sorted(set(UPWARD) - used)}"


def test_the_wrappers_enter_through_the_stages():
    modules, graph = _graph()
    found = set()
    for module, imports in graph.items():
        if module.split(".")[0] not in WRAPPERS:
            continue
        for name, _, _ in _targets(imports):
            if _within(name, "sora") and name != "sora" and name in modules \
                    and not any(_within(name, e) for e in WRAPPER_ENTRIES):
                found.add((module, name))
    assert found <= WRAPPER_BYPASSES, f"wrappers reaching past sora.stages: {sorted(found - WRAPPER_BYPASSES)}"
    assert WRAPPER_BYPASSES <= found, f"WRAPPER_BYPASSES entries no longer needed: {sorted(WRAPPER_BYPASSES - found)}"
