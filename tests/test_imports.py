"""The import direction of ARCHITECTURE.md, read from the source with `ast` (lazy imports inside functions count).

core (top-level modules) -> core only; kv -> core; tiny -> core; prune -> core and tiny (its calibration text is
tiny's training split, its copy test tiny's); book -> anything; nothing but book itself imports book. The package
facade `tappa_utils/__init__.py` may re-export a use (`TAPPAPress`), never book.

No import cycle among the modules either (issue 28): a cycle closed by an import inside a function is still one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tappa_utils"
PARTS = ("kv", "prune", "tiny", "book")
ALLOWED = {"core": {"core"}, "kv": {"core", "kv"}, "tiny": {"core", "tiny"}, "prune": {"core", "prune", "tiny"},
           "book": {"core", "kv", "prune", "tiny", "book", "facade", "cli"},
           "facade": {"core", "kv", "prune", "tiny"}, "cli": {"core"}}


def part_of(module: str) -> str:
    """Which part a dotted tappa_utils module belongs to: core, kv, prune, tiny, book, facade or cli."""
    parts = module.split(".")
    if parts == ["tappa_utils"]:
        return "facade"
    if parts == ["tappa_utils", "__main__"]:
        return "cli"
    return parts[1] if parts[1] in PARTS else "core"


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of the tappa_utils modules `source` (the code of `module`) imports, wherever the import is."""
    out = set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:  # `from . import scores` imports the module scores, not the package's own code
                out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}
    return {m for m in out if m == "tappa_utils" or m.startswith("tappa_utils.")}


def package_sources() -> list[tuple[str, str, bool]]:
    """(dotted name, source, is a package) of every module of tappa_utils."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out.append((".".join(parts[:-1] if is_pkg else parts), path.read_text(encoding="utf-8"), is_pkg))
    return out


def violations(sources) -> list[str]:
    """`importer -> imported` for every import that goes against ALLOWED."""
    bad = []
    for module, source, is_pkg in sources:
        for target in sorted(imported_modules(source, module, is_pkg)):
            if part_of(target) not in ALLOWED[part_of(module)]:
                bad.append(f"{module} -> {target}")
    return bad


def import_graph(sources) -> dict[str, set[str]]:
    """{module: the package's modules it imports} (imports inside functions too; a name imported from a module
    counts as that module, a package's `__init__` as the package)."""
    sources = list(sources)
    modules = {m for m, _, _ in sources}
    return {m: {t for t in imported_modules(src, m, pkg) if t in modules and t != m} for m, src, pkg in sources}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The import cycles of `graph`: its strongly connected components of two or more modules (Tarjan), each as
    a sorted tuple, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def cycle_path(graph: dict[str, set[str]], component: tuple[str, ...]) -> str:
    """One shortest import cycle through the first module of `component`: `a -> b -> a` (for the failure message)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return " -> ".join(paths[v] + [start])
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise ValueError(f"{component} is not a cycle of the graph")


def test_no_import_cycles():
    graph = import_graph(package_sources())
    found = cycles(graph)
    assert found == [], "import cycles: " + "; ".join(cycle_path(graph, c) for c in found)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [("a", "b")]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}}, [("a", "b", "c"), ("d", "e")]),
    ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, []),  # a diamond is no cycle
    ({"a": {"b"}, "b": {"c", "a"}, "c": {"b"}}, [("a", "b", "c")]),
])
def test_the_cycle_finder_finds_every_cycle(graph, expected):
    assert cycles(graph) == expected


def test_a_lazy_import_closes_a_cycle():
    sources = [("tappa_utils.io", "def f():\n    from .preflight import UsageError\n", False),
               ("tappa_utils.preflight", "from .io import foreign_entries\n", False),
               ("tappa_utils.errors", "", False)]
    graph = import_graph(sources)
    assert graph == {"tappa_utils.io": {"tappa_utils.preflight"}, "tappa_utils.preflight": {"tappa_utils.io"},
                     "tappa_utils.errors": set()}
    assert cycles(graph) == [("tappa_utils.io", "tappa_utils.preflight")]
    assert cycle_path(graph, ("tappa_utils.io", "tappa_utils.preflight")) == \
        "tappa_utils.io -> tappa_utils.preflight -> tappa_utils.io"


def test_moved_names_stay_importable_where_they_were():
    """Issue 28 moved these names to break cycles; the old import paths (tests, notebooks, kv/, tiny/) still work."""
    from tappa_utils import claims, errors, io, preflight, results
    from tappa_utils.book import __main__ as book_main
    from tappa_utils.book import cli, parser

    assert (results.Check, results.claim_status, results.KINDS) == (claims.Check, claims.claim_status, claims.KINDS)
    assert preflight.UsageError is io.UsageError is errors.UsageError
    assert preflight.check_out_dir is io.check_out_dir
    assert book_main.main is cli.main and book_main.build_parser is cli.build_parser is parser.build_parser


def test_the_parts_are_all_present():
    found = {part_of(m) for m, _, _ in package_sources()}
    assert found == {"core", "kv", "prune", "tiny", "book", "facade", "cli"}


def test_imports_follow_the_architecture():
    assert violations(package_sources()) == []


@pytest.mark.parametrize("module, source, is_pkg, expected", [
    ("tappa_utils.metrics", "def f():\n    from .kv.budgets import allocate_budgets\n", False,
     ["tappa_utils.metrics -> tappa_utils.kv.budgets",
      "tappa_utils.metrics -> tappa_utils.kv.budgets.allocate_budgets"]),
    ("tappa_utils.time_series", "from .tiny import card\n", False,
     ["tappa_utils.time_series -> tappa_utils.tiny", "tappa_utils.time_series -> tappa_utils.tiny.card"]),
    ("tappa_utils.kv.evaluate", "import tappa_utils.book\n", False, ["tappa_utils.kv.evaluate -> tappa_utils.book"]),
    ("tappa_utils.tiny", "from ..prune import scores\n", True,
     ["tappa_utils.tiny -> tappa_utils.prune", "tappa_utils.tiny -> tappa_utils.prune.scores"]),
    ("tappa_utils.prune.scores", "from ..tiny.corpus import load_corpus\nfrom ..models import decoder_layers\n",
     False, []),
    ("tappa_utils", "from .book import build\n", True,
     ["tappa_utils -> tappa_utils.book", "tappa_utils -> tappa_utils.book.build"]),
])
def test_the_checker_catches_wrong_directions(module, source, is_pkg, expected):
    assert violations([(module, source, is_pkg)]) == expected


def import_cycles(sources, part: str) -> list[list[str]]:
    """Import cycles among the modules of one part (imports inside functions count), each as a closed path."""
    mods = {m for m, _, _ in sources if part_of(m) == part}
    graph = {m: sorted(t for t in imported_modules(s, m, p) if t in mods and t != m)
             for m, s, p in sources if m in mods}
    cycles, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for t in graph[m]:
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [m, t] if t in path else [m, t])
            elif t not in state:
                visit(t, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_kv_has_no_import_cycle():
    """kv's modules import one way (evaluate -> report -> methods; report used to import evaluate back)."""
    assert import_cycles(package_sources(), "kv") == []


def test_the_cycle_finder_finds_a_cycle():
    sources = [("tappa_utils.kv.evaluate", "from .report import summarize\n", False),
               ("tappa_utils.kv.report", "def f():\n    from .evaluate import METHODS\n", False)]
    assert import_cycles(sources, "kv") == [["tappa_utils.kv.evaluate", "tappa_utils.kv.report",
                                             "tappa_utils.kv.evaluate"]]
