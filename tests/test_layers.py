"""The package's shape (issue 12): layers, no import cycles, small files.

Every module of ``daskgmm/`` is parsed with ``ast`` (nothing is imported) and every import
of a daskgmm module is collected: module level, inside functions and methods, under
``if TYPE_CHECKING:``, and ``importlib.import_module("daskgmm....")`` with a literal name.
A module imports only from its own layer or below (``LAYERS``); the import graph has no
cycle; no file is over ``MAX_LINES`` lines; library code (layers 0-3) never imports the
applications (``daskgmm.cli``, ``daskgmm.benchmarks``).

Importing a submodule (``import daskgmm.io``, ``from daskgmm import io``, ``from . import io``)
depends on that submodule; ``import daskgmm`` or ``from daskgmm import GaussianMixture``
depends on the package itself, ``daskgmm/__init__.py``, which is layer 3.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "daskgmm"
MAX_LINES = 600

#: The layer table (issue 12). A module imports only from its own layer or below.
#: Keys are paths under daskgmm/; a key ending in "/" is a package: every module in it.
LAYERS = {
    # L0 maths: numpy/scipy only, no dask, no daskgmm state
    "_typing.py": 0,
    "_gaussian.py": 0,
    "_missing.py": 0,
    "_kernels.py": 0,
    "_compiled.py": 0,  # issue 17: the fused kernel compiled with numba
    "_numba.py": 0,  # everything numba compiles for it, in one file (its disk cache)
    "_streaming.py": 0,
    "_bayesian.py": 0,
    # L1 plumbing
    "_graph.py": 1,
    "_input.py": 1,
    "_params.py": 1,
    "_placement.py": 1,
    "_init.py": 1,
    "_progress.py": 1,
    "io.py": 1,
    "datasets.py": 1,
    "_collapse.py": 1,
    "_storage.py": 1,  # issue 16: local paths and URLs (fsspec), storage options
    "_zarr_output.py": 1,  # issue 16: the one safe Zarr writer (local disk and object stores)
    "_geo.py": 1,  # issue 16: coordinates, attributes and CRS of image outputs; GeoTIFF input
    # L2 engine
    "_engine.py": 2,
    "checkpoint.py": 2,
    "_stepwise.py": 2,
    # L3 public objects
    "_base.py": 3,
    "_interop.py": 3,
    "_gaussian_mixture.py": 3,
    "_bayesian_mixture.py": 3,
    "segmentation.py": 3,
    "selection.py": 3,
    "image.py": 3,
    "accessor.py": 3,
    "plot.py": 3,
    "_repr.py": 3,
    "__init__.py": 3,
    "_accessor_hook.py": 3,
    # L4 applications (one module per subcommand, imported lazily)
    "cli/": 4,
    "benchmarks/": 4,
}
LAYER_NAMES = {0: "maths", 1: "plumbing", 2: "engine", 3: "public objects", 4: "applications"}
APPLICATIONS = ("daskgmm.cli", "daskgmm.benchmarks")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported daskgmm module, dotted
    path: str  # daskgmm/... of the importing file
    line: int
    statement: str  # the import as written
    where: str  # "module level", "in function f", "under TYPE_CHECKING"

    def __str__(self):
        return f"{self.path}:{self.line} ({self.where}): {self.statement}"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files() -> dict[str, Path]:
    """dotted module name -> file, for every .py file under daskgmm/."""
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


FILES = _files()


def is_package(name: str) -> bool:
    return FILES.get(name, Path()).name == "__init__.py"


def layer_of(name: str) -> int | None:
    """The layer of a dotted daskgmm module name, or None when the table does not list it."""
    for app in APPLICATIONS:
        if name == app or name.startswith(app + "."):
            return 4
    rel = FILES[name].relative_to(PACKAGE_DIR).as_posix() if name in FILES else None
    return LAYERS.get(rel) if rel is not None else None


def _resolve_from(source: str, node: ast.ImportFrom) -> str:
    """The absolute module of ``from X import ...`` written in module ``source``."""
    if node.level == 0:
        return node.module or ""
    package = source if is_package(source) else source.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, source: str, path: str):
        self.source, self.path = source, path
        self.scope: list[str] = []
        self.imports: list[Import] = []

    def _where(self) -> str:
        return f"in {'.'.join(self.scope)}" if self.scope else "module level"

    def _add(self, target: str, node: ast.AST, where: str | None = None):
        if target == "daskgmm" or target.startswith("daskgmm."):
            self.imports.append(
                Import(
                    self.source,
                    target,
                    self.path,
                    node.lineno,
                    ast.unparse(node).splitlines()[0],
                    where or self._where(),
                )
            )

    def _scoped(self, node, name):
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node):
        self._scoped(node, node.name + "()")

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._scoped(node, node.name)

    def visit_If(self, node):
        if _is_type_checking(node.test):
            self.scope.append("if TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self.scope.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node):
        base = _resolve_from(self.source, node)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            # `from daskgmm import io` imports the submodule; `from daskgmm import load` the package
            self._add(sub if sub in FILES else base, node)

    def visit_Call(self, node):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            arg = node.args[0].value
            if isinstance(arg, str):
                if arg.startswith(".") and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    arg = node.args[1].value + arg  # import_module(".x", "daskgmm"): good enough
                self._add(arg, node)
        self.generic_visit(node)


def _parse() -> tuple[list[Import], list[str]]:
    imports, errors = [], []
    for name, path in FILES.items():
        rel = path.relative_to(PACKAGE_DIR.parent).as_posix()
        try:
            tree = ast.parse(path.read_text(), filename=rel)
        except SyntaxError as e:
            errors.append(f"{rel}:{e.lineno}: does not parse: {e.msg}")
            continue
        c = _Collector(name, rel)
        c.visit(tree)
        imports += [i for i in c.imports if i.target != name]
    return imports, errors


IMPORTS, PARSE_ERRORS = _parse()


def _fail_if(lines: list[str], title: str, count: int | None = None) -> None:
    """Fail with ``title (n):`` and one line per finding, without pytest's repr of the list."""
    if lines:
        pytest.fail(
            f"{title} ({len(lines) if count is None else count}):\n  " + "\n  ".join(lines), pytrace=False
        )


def test_every_module_parses():
    _fail_if(PARSE_ERRORS, "daskgmm modules that do not parse")


def test_imports_name_modules_that_exist():
    missing = [f"{i} -> {i.target} does not exist" for i in IMPORTS if i.target not in FILES]
    _fail_if(missing, "imports of daskgmm modules that are not in daskgmm/")


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle (as a closed path of module names) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v):  # Tarjan; the graph has a few dozen nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                connect(w)
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
                components.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            connect(v)

    cycles = []
    for comp in components:
        members = set(comp)
        # shortest cycle through the component's first module (breadth first)
        start = comp[0]
        prev = {start: None}
        queue = [start]
        found = None
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(edges.get(v, {})):
                if w == start:
                    found = v
                    break
                if w in members and w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = prev[v]
        cycles.append(path + [start])
    return cycles


def test_import_graph_has_no_cycle():
    edges: dict[str, dict[str, Import]] = {}
    for i in IMPORTS:
        if i.target in FILES:
            edges.setdefault(i.source, {}).setdefault(i.target, i)
    cycles = _cycles(edges)
    lines = []
    for cycle in cycles:
        lines.append(" -> ".join(cycle))
        lines += [f"    {edges[a][b]}" for a, b in zip(cycle, cycle[1:])]
    _fail_if(
        lines,
        "import cycles among daskgmm modules, counting imports inside functions (each shown as its shortest "
        "loop, then the import that makes each step)",
        count=len(cycles),
    )


def test_every_module_imports_only_from_its_own_layer_or_below():
    problems = []
    for name, path in FILES.items():
        if layer_of(name) is None:
            rel = path.relative_to(PACKAGE_DIR).as_posix()
            problems.append(
                f"daskgmm/{rel} ({name}) is not in the layer table: add it to LAYERS in tests/test_layers.py "
                "at its layer (0 maths, 1 plumbing, 2 engine, 3 public objects, 4 applications), or move its "
                "code into a module that is"
            )
    for i in IMPORTS:
        src, dst = layer_of(i.source), layer_of(i.target)
        if src is None or dst is None or dst <= src:
            continue
        what = "the package daskgmm itself (daskgmm/__init__.py)" if i.target == "daskgmm" else i.target
        problems.append(
            f"{i}: layer {src} ({LAYER_NAMES[src]}) {i.source} imports layer {dst} ({LAYER_NAMES[dst]}) {what}"
        )
    _fail_if(problems, "layer violations (a module may import only from its own layer or below)")


def test_library_never_imports_the_applications():
    offenders = [
        f"{i}: layer {layer_of(i.source)} {i.source} imports {i.target}"
        for i in IMPORTS
        if (layer_of(i.source) or 0) <= 3
        and layer_of(i.source) is not None
        and any(i.target == a or i.target.startswith(a + ".") for a in APPLICATIONS)
    ]
    # an unlisted module is library code unless it lives under cli/ or benchmarks/
    offenders += [
        f"{i}: {i.source} (not in the layer table) imports {i.target}"
        for i in IMPORTS
        if layer_of(i.source) is None
        and any(i.target == a or i.target.startswith(a + ".") for a in APPLICATIONS)
    ]
    _fail_if(offenders, "library modules (layers 0-3) that import daskgmm.cli or daskgmm.benchmarks")


def test_no_file_is_over_the_line_limit():
    long = []
    for path in FILES.values():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            long.append(f"daskgmm/{path.relative_to(PACKAGE_DIR).as_posix()}: {n} lines")
    _fail_if(long, f"files in daskgmm/ over {MAX_LINES} lines (split them)")


def test_every_numba_function_is_in_one_file():
    """numba's disk cache keys a compiled function on the content of its own file, and the cached
    machine code includes every function it calls: a callee in another file could change without
    invalidating it (daskgmm/_numba.py says more)."""
    pattern = re.compile(r"@_jit\b|\bnjit\(|\bnumba\.jit\b|@jit\b")
    offenders = [
        f"daskgmm/{path.relative_to(PACKAGE_DIR).as_posix()}"
        for path in FILES.values()
        if path.name != "_numba.py" and pattern.search(path.read_text())
    ]
    _fail_if(offenders, "files other than daskgmm/_numba.py that compile functions with numba")
    assert pattern.search((PACKAGE_DIR / "_numba.py").read_text())


def test_the_collector_sees_every_kind_of_import():
    """The checks above are only as good as this: module level, relative, inside functions and
    methods, under TYPE_CHECKING, importlib with a literal name; package vs submodule."""
    code = (
        "import daskgmm\n"
        "import numpy\n"
        "from . import io\n"
        "from .io import save_model\n"
        "from daskgmm import GaussianMixture\n"
        "if TYPE_CHECKING:\n"
        "    from daskgmm.image import segment\n"
        "def f():\n"
        "    import daskgmm.cli\n"
        "class C:\n"
        "    def m(self):\n"
        "        importlib.import_module('daskgmm.plot')\n"
    )
    c = _Collector("daskgmm._graph", "daskgmm/_graph.py")
    c.visit(ast.parse(code))
    got = [(i.target, i.line, i.where) for i in c.imports]
    assert got == [
        ("daskgmm", 1, "module level"),
        ("daskgmm.io", 3, "module level"),
        ("daskgmm.io", 4, "module level"),
        ("daskgmm", 5, "module level"),
        ("daskgmm.image", 7, "in if TYPE_CHECKING"),
        ("daskgmm.cli", 9, "in f()"),
        ("daskgmm.plot", 12, "in C.m()"),
    ]
    assert layer_of("daskgmm") == 3 and layer_of("daskgmm.cli") == 4 and layer_of("daskgmm._graph") == 1
