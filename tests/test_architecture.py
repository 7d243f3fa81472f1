"""The shape of the code base: no import cycle, and no import that runs up the layers.

Every ``import``/``from ... import`` of editalign in src/editalign counts, wherever it
stands (module level, inside a function, under ``TYPE_CHECKING``): an import hidden in a
function is still an edge. The layers are drawn in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom first. A module may import its own unit (the package or top-level module it is
# in) and any unit of a lower layer; units of one layer are peers and do not import each
# other.
LAYERS: list[list[str]] = [
    ["editalign.options"],  # validators for option values (check_choice), importable by all
    ["editalign.models", "editalign.losses", "editalign.llm", "editalign.outputs",
     "editalign.masks"],
    # backbones, tokenizers, pure losses, the OpenAI-compatible HTTP client, output targets,
    # attention masks
    ["editalign.gemma3"],  # the gemma3-270m builder (its GGUF package; an editalign.models entry point)
    ["editalign.reward_model"],  # the reward-model head on a backbone
    ["editalign.reward_sources"],  # every RL reward source behind one score() interface
    ["editalign.data"],  # edit pairs, presets, readers, prompts, labels, DataArguments
    ["editalign.batching"],  # pair layouts, collators, the shared-prefix forward
    ["editalign.eval"],  # metrics, judges, win rate
    ["editalign.train", "editalign.score", "editalign.sample", "editalign.label"],  # trainers;
    # scoring with a reward model; sampling a policy; the label command
    ["editalign.revise"],  # revision with an LLM (its reward filter scores)
    ["editalign.annotate"],  # the annotation web tool
    ["editalign.bench"],  # the benchmark task and runner
    ["editalign.registry"],  # the table of judges (gold from bench, the rest from eval)
    ["editalign.loop"],  # sample -> revise -> label -> train -> evaluate, round after round
    ["editalign.cli", "editalign"],  # the command; the package's face
]

# Breaks that are known and have a planned fix; each must be removed when fixed (the test
# fails on a listed break that no longer exists, so the list only shrinks).
KNOWN_BREAKS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the editalign modules it imports (resolved to modules that exist)."""
    files = {module_name(p): p for p in (SRC / "editalign").rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

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
    return import_graph()


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
