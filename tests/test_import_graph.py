"""The packages depend one way, pipelines -> stage2_prior -> stage1_tokenizer -> vqgen, and no module imports
itself back through others (a function-level import included): every import of every file, read with `ast`.
Imports under `if TYPE_CHECKING:` are for annotations only and are left out."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["vqgen", "stage1_tokenizer", "stage2_prior", "pipelines"]  # each may import only itself and those before it


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def runtime_nodes(node: ast.AST):
    """Every node below `node`, less the bodies of `if TYPE_CHECKING:` blocks."""
    for child in ast.iter_child_nodes(node):
        test = child.test if isinstance(child, ast.If) else None
        if test is not None and "TYPE_CHECKING" in ast.unparse(test):
            yield from (n for branch in child.orelse for n in [branch, *runtime_nodes(branch)])
            continue
        yield child
        yield from runtime_nodes(child)


def imported_modules(name: str, source: str) -> set[str]:
    """The modules of the four packages that the module `name`, whose text is `source`, imports."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from package import module` imports the module; `from module import name` the module itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a name inside a module: that module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    return {name: imported_modules(name, source) for name, source in sources.items()}


def backward_edges(graph: dict[str, set[str]]) -> list[str]:
    rank = {package: i for i, package in enumerate(PACKAGES)}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if rank[b.split(".")[0]] > rank[a.split(".")[0]])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that can reach itself (depth-first search)."""
    found, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


SOURCES = {name: path.read_text() for name, path in MODULES.items()}


def test_packages_depend_one_way_and_no_module_imports_itself_back():
    graph = import_graph(SOURCES)
    # the reading sees relative, absolute and package imports at all
    assert graph["stage1_tokenizer.vqvae"] >= {"stage1_tokenizer.configs", "stage1_tokenizer.quantizers",
                                               "vqgen.validation"}
    assert not backward_edges(graph)
    assert not cycles(graph)


@pytest.mark.parametrize("edit, expected", [
    # a core module reaching up into a stage
    (("vqgen.validation", "def f():\n    from stage1_tokenizer.configs import VQVAEConfig\n"), "backward"),
    # a config importing, inside a function, the model that imports the config
    (("stage1_tokenizer.configs", "def f():\n    from .vqvae import VQVAE\n"), "cycle"),
    # an annotation-only import is no dependency
    (("stage1_tokenizer.networks", "if TYPE_CHECKING:\n    from .vqvae import VQVAE\n"), None),
])
def test_a_back_edge_is_caught(edit, expected):
    name, extra = edit
    graph = import_graph({**SOURCES, name: SOURCES[name] + "\n" + extra})
    assert bool(backward_edges(graph)) == (expected == "backward")
    assert bool(cycles(graph)) == (expected == "cycle")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports_from_the_file_the_graph_read(name):
    # the graph is only as good as its files: each module must import, and be the very file that was walked
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve() == MODULES[name].resolve()
