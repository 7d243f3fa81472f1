"""The shape of the code base: no import cycle, no import that runs up the layers, and no
edge the import statements do not show.

Every ``import``/``from ... import`` of editalign in src/editalign counts, wherever it
stands (module level, inside a function, under ``TYPE_CHECKING``): an import hidden in a
function is still an edge. So does a string that names an editalign module
(``"editalign.x.y"``, ``"editalign.x:function"``: what ``importlib`` or an entry point
loads), and a string import out of its own package fails on its own: where a module means
another package, it imports it. A path built from ``__file__`` into another package's files
(``Path(__file__).parent / "bench"``) fails too: the files of a package are its own
business. The layers are drawn in docs/architecture.md, whose "Checked shape" table this
test recomputes.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
# A string constant that is nothing but an editalign module (and maybe ":attribute").
MODULE_STRING = re.compile(r"editalign(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_][\w.]*)?")
MAX_FILE_LINES = 600

# Bottom first. A module may import its own unit (the package or top-level module it is
# in) and any unit of a lower layer; units of one layer are peers and do not import each
# other.
LAYERS: list[list[str]] = [
    ["editalign.options"],  # validators for option values (check_choice), importable by all
    ["editalign.models", "editalign.losses", "editalign.llm", "editalign.outputs",
     "editalign.masks", "editalign.padding"],
    # backbones, tokenizers, pure losses, the OpenAI-compatible HTTP client, output targets,
    # attention masks, padding rows of token ids
    ["editalign.gemma3"],  # the gemma3-270m builder (its GGUF package; an editalign.models entry point)
    ["editalign.reward_model"],  # the reward-model head on a backbone
    ["editalign.reward_sources"],  # every RL reward source behind one score() interface
    ["editalign.data"],  # edit pairs, presets, readers, prompts, labels, DataArguments
    ["editalign.batching"],  # pair layouts, collators, the shared-prefix forward
    ["editalign.generation"],  # sampling settings, prompt encoding, the one generate() call
    ["editalign.eval"],  # metrics, judges, win rate
    ["editalign.train", "editalign.sample"],  # trainers; sampling a policy into a rows file
    ["editalign.revise"],  # revision with an LLM (its reward filter scores)
    ["editalign.annotate"],  # the annotation web tool
    ["editalign.bench"],  # the benchmark task and runner
    ["editalign.registry"],  # the table of judges (gold from bench, the rest from eval)
    ["editalign.commands.common"],  # what every command shares: --config, running one
    ["editalign.commands.label", "editalign.commands.sample", "editalign.commands.score",
     "editalign.commands.revise", "editalign.commands.annotate", "editalign.commands.evaluate",
     "editalign.commands.bench", "editalign.commands.train"],  # the commands a loop stage runs
    ["editalign.loop"],  # sample -> revise -> label -> train -> evaluate, round after round
    ["editalign.commands"],  # the table of every command; the loop and demo commands
    ["editalign.cli", "editalign"],  # the command; the package's face
]

# Breaks that are known and have a planned fix; each must be removed when fixed (the test
# fails on a listed break that no longer exists, so the list only shrinks).
KNOWN_BREAKS: dict[tuple[str, str], str] = {}
# String imports out of their own package, known and with a planned fix (the list only
# shrinks, as KNOWN_BREAKS); the graph leaves them out until they are fixed.
KNOWN_STRING_EDGES: dict[tuple[str, str], str] = {
    ("editalign.loop.runner", "editalign.cli"):
        "the loop runs its train/bench stages as `python -m editalign.cli` children: a "
        "process boundary, not an import (in-process stages go through the stage commands "
        "below the loop); kept named here so it stays the only one",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "editalign").rglob("*.py"))}


def _resolver(files: dict[str, Path]):
    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    return resolve


def import_graph() -> dict[str, set[str]]:
    """module -> the editalign modules it imports (resolved to modules that exist)."""
    files = source_files()
    resolve = _resolver(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for candidate in candidates:
                if candidate.split(".")[0] == "editalign":
                    target = resolve(candidate)
                    if target and target != name:
                        targets.add(target)
        graph[name] = targets
    return graph


def string_edges() -> set[tuple[str, str]]:
    """(module, module its string constants name): ``"editalign.x.y"``, ``"editalign.x:f"``."""
    files = source_files()
    resolve = _resolver(files)
    edges = set()
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and MODULE_STRING.fullmatch(node.value):
                target = resolve(node.value.partition(":")[0])
                if target and target != name:
                    edges.add((name, target))
    return edges


def with_string_edges(graph: dict[str, set[str]], strings: set[tuple[str, str]]
                      ) -> dict[str, set[str]]:
    """The import graph plus the string imports out of their own unit: edges for cycles and
    layers like any import. Inside a unit a string is a lazy table (``TRAINERS``) or the
    package's own data (``resources.files``), not a dependency on anything else."""
    found = {name: set(targets) for name, targets in graph.items()}
    for source, target in strings:
        if unit_of(source)[1] != unit_of(target)[1] and (source, target) not in \
                KNOWN_STRING_EDGES:
            found[source].add(target)
    return found


def _built_path(node: ast.AST, here: Path) -> Path | None:
    """The path an expression builds from ``__file__`` (``here``) with constant parts, or
    None: ``Path(__file__).parent / "x"``, ``.parents[1]``, ``.with_name``, ``.joinpath``,
    ``.resolve()``, ``os.path.dirname``/``join``."""
    def const(arg: ast.AST) -> str | None:
        return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
            else None

    if isinstance(node, ast.Name) and node.id == "__file__":
        return here
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        base, part = _built_path(node.left, here), const(node.right)
        return base / part if base is not None and part is not None else None
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        base = _built_path(node.value, here)
        return base.parent if base is not None else None
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
            and node.value.attr == "parents" and isinstance(node.slice, ast.Constant):
        base = _built_path(node.value.value, here)
        return base.parents[node.slice.value] if base is not None else None
    if not isinstance(node, ast.Call):
        return None
    function, args = node.func, node.args
    called = function.attr if isinstance(function, ast.Attribute) else \
        function.id if isinstance(function, ast.Name) else None
    parts = [const(arg) for arg in args[1:]]
    if called in ("Path", "PurePath", "abspath", "realpath", "normpath") and len(args) == 1:
        return _built_path(args[0], here)
    if called == "dirname" and len(args) == 1:
        base = _built_path(args[0], here)
        return base.parent if base is not None else None
    if called == "join" and args and None not in parts:
        base = _built_path(args[0], here)
        return base.joinpath(*parts) if base is not None else None  # type: ignore[arg-type]
    if isinstance(function, ast.Attribute):
        base = _built_path(function.value, here)
        parts = [const(arg) for arg in args]
        if base is None or None in parts:
            return None
        if called in ("resolve", "absolute") and not args:
            return base
        if called == "with_name" and len(parts) == 1:
            return base.with_name(parts[0])  # type: ignore[arg-type]
        if called == "joinpath":
            return base.joinpath(*parts)  # type: ignore[arg-type]
    return None


def owner_of(path: Path) -> str | None:
    """The module or package of src/editalign that a file or folder belongs to."""
    path = Path(os.path.normpath(path))
    if not path.is_relative_to(SRC / "editalign"):
        return None
    if path.suffix == ".py":
        return module_name(path)
    while not (path / "__init__.py").is_file():
        path = path.parent
    return module_name(path / "__init__.py")


def path_edges() -> set[tuple[str, str]]:
    """(module, unit whose files it reaches by a path built from ``__file__``), other units."""
    edges = set()

    def visit(node: ast.AST, name: str, path: Path) -> None:
        built = _built_path(node, path)
        if built is None:
            for child in ast.iter_child_nodes(node):
                visit(child, name, path)
            return
        # the whole expression only: its parts (Path(__file__).parent ...) are steps to it
        target = owner_of(built)
        if target is not None and unit_of(target)[1] != unit_of(name)[1]:
            edges.add((name, unit_of(target)[1]))

    for name, path in source_files().items():
        visit(ast.parse(path.read_text(), str(path)), name, path)
    return edges


def unit_of(module: str) -> tuple[int, str]:
    """(layer index, unit) of a module: the longest unit prefix that names it."""
    best: tuple[int, str] | None = None
    for index, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and \
                    (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS "
                             "(and to docs/architecture.md)")
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_breaks(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    breaks = set()
    for source, targets in graph.items():
        layer, unit = unit_of(source)
        for target in targets:
            target_layer, target_unit = unit_of(target)
            if target_layer > layer or (target_layer == layer and target_unit != unit):
                breaks.add((source, target))
    return breaks


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return with_string_edges(import_graph(), string_edges())


def test_the_graph_sees_function_local_and_relative_imports(tmp_path, monkeypatch):
    package = tmp_path / "editalign"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from editalign.sub import b\n")
    (package / "sub" / "__init__.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("from ..a import f\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    found = import_graph()
    assert found["editalign.a"] == {"editalign.sub", "editalign.sub.b"}
    assert found["editalign.sub.b"] == {"editalign.a"}
    assert cycles(found) == [["editalign.a", "editalign.sub", "editalign.sub.b"]]


def test_string_imports_and_paths_into_other_packages_are_seen(tmp_path, monkeypatch):
    package = tmp_path / "editalign"
    for sub in ("low", "high"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low" / "registry.py").write_text(
        "import importlib\nfrom pathlib import Path\n"
        "TARGET = 'editalign.high.builder:build'\n"
        "OWN = 'editalign.low.registry'\n"  # itself: no edge
        "PROSE = 'see editalign.high.builder for the builder'\n"  # not a module string
        "HIGH = Path(__file__).parent.parent / 'high'\n"
        "FILE = Path(__file__).resolve().parents[1] / 'high' / 'builder.py'\n"
        "MINE = Path(__file__).with_name('other.py')\n"  # its own package's files: fine
        "def load():\n    return importlib.import_module('editalign.high')\n")
    (package / "high" / "builder.py").write_text(
        "import os\nDATA = os.path.join(os.path.dirname(__file__), '..', 'low', 'x.txt')\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    monkeypatch.setattr(__import__(__name__), "LAYERS",
                        [["editalign.low"], ["editalign.high"], ["editalign"]])
    assert string_edges() == {("editalign.low.registry", "editalign.high.builder"),
                              ("editalign.low.registry", "editalign.high")}
    assert path_edges() == {("editalign.low.registry", "editalign.high"),
                            ("editalign.high.builder", "editalign.low")}
    # In the graph a string import is an edge like any import: here one that runs up.
    found = with_string_edges(import_graph(), string_edges())
    assert layer_breaks(found) == {("editalign.low.registry", "editalign.high.builder"),
                                   ("editalign.low.registry", "editalign.high")}


def test_no_string_import_out_of_its_package():
    crossing = {(a, b) for a, b in string_edges() if unit_of(a)[1] != unit_of(b)[1]}
    new = crossing - set(KNOWN_STRING_EDGES)
    assert not new, "strings naming another package's module (import it instead): " \
        + ", ".join(f"{a} -> {b}" for a, b in sorted(new))
    fixed = set(KNOWN_STRING_EDGES) - crossing
    assert not fixed, f"fixed, so remove them from KNOWN_STRING_EDGES: {sorted(fixed)}"


def test_no_path_into_another_packages_files():
    assert path_edges() == set(), "paths built from __file__ into another package's files " \
        "(let that package read its own files, or ship them as package data)"


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_no_import_runs_up_the_layers(graph):
    breaks = layer_breaks(graph)
    new = {edge for edge in breaks if edge not in KNOWN_BREAKS}
    assert not new, "imports that run up or across the layers (see docs/architecture.md): " \
        + ", ".join(f"{a} -> {b}" for a, b in sorted(new))
    fixed = set(KNOWN_BREAKS) - breaks
    assert not fixed, f"fixed, so remove them from KNOWN_BREAKS: {sorted(fixed)}"


def test_eval_does_not_import_bench_and_nothing_registers_by_import(graph):
    assert not any(t.startswith("editalign.bench") for m, ts in graph.items()
                   if m.startswith("editalign.eval") for t in ts)
    # `import editalign.bench` for its side effect was how tiny-bench got registered.
    for path in (SRC / "editalign").rglob("*.py"):
        assert "import editalign.bench  #" not in path.read_text(), path


def checked_shape(graph: dict[str, set[str]]) -> str:
    """The "Checked shape" table of docs/architecture.md, as the code stands."""
    lines = {name: len(path.read_text().splitlines()) for name, path in source_files().items()}

    def file_of(name: str) -> str:
        return "`" + str(source_files()[name].relative_to(SRC / "editalign")) + "`"

    largest = max(lines, key=lambda name: (lines[name], name))
    over = sorted((name for name, n in lines.items() if n > MAX_FILE_LINES),
                  key=lambda name: -lines[name])
    crossing = sorted((a, b) for a, b in string_edges() if unit_of(a)[1] != unit_of(b)[1])
    rows = [
        ("import cycles", str(len(cycles(graph)))),
        ("layer breaks", str(len(layer_breaks(graph)))),
        ("string imports out of their package",
         f"{len(crossing)}" + (" (" + ", ".join(f"`{a}` → `{b}`" for a, b in crossing) + ")"
                               if crossing else "")),
        ("paths into another package's files", str(len(path_edges()))),
        (f"source files over {MAX_FILE_LINES} lines",
         f"{len(over)}" + (" (" + ", ".join(f"{file_of(n)} {lines[n]}" for n in over) + ")"
                           if over else "")),
        ("largest file", f"{file_of(largest)}, {lines[largest]} lines"),
    ]
    return "\n".join(["| checked | now |", "| --- | --- |",
                      *(f"| {name} | {value} |" for name, value in rows)])


def test_the_docs_checked_shape_table_is_current(graph):
    text = DOC.read_text()
    begin, end = "<!-- checked-shape: begin -->\n", "\n<!-- checked-shape: end -->"
    assert begin in text and end in text, f"docs/architecture.md lost its {begin.strip()} block"
    documented = text.split(begin, 1)[1].split(end, 1)[0]
    expected = checked_shape(graph)
    assert documented == expected, "docs/architecture.md's Checked shape table is out of " \
        "date; the code measures:\n" + expected

