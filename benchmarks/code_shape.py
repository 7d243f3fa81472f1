"""Print the code-shape figures issue #26 reports before -> after.

Counts, over src/editalign: function-local imports of editalign, the ones among them that
re-import a module the same file already imports at top level, string constants naming an
editalign module, the largest files and the functions over 60 lines. Pure AST, no import
of editalign, so it measures any checkout: `python benchmarks/code_shape.py [SRC_DIR]`.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

# "editalign.x.y" or "editalign.x:fn" inside a string: an edge the import graph cannot see.
_STRING_IMPORT = re.compile(r"^editalign(\.\w+)+(:\w+)?$")
_LONG_FUNCTION = 60


def _imported_modules(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """Module names of editalign an import statement reaches (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "editalign"]
    base = node.module or ""
    if node.level:
        parts = module.split(".")[: -node.level]
        base = ".".join(parts + ([base] if base else []))
    return [base] if base.split(".")[0] == "editalign" else []


def _module_name(path: Path, src: Path) -> str:
    # "__init__" stays in the name so a level-1 relative import resolves to the package itself.
    return ".".join(path.relative_to(src).with_suffix("").parts)


def measure(src: Path) -> dict[str, object]:
    local: list[str] = []
    redundant: list[str] = []
    strings: list[str] = []
    sizes: list[tuple[int, str]] = []
    long_functions: list[tuple[int, str]] = []
    for path in sorted((src / "editalign").rglob("*.py")):
        rel = str(path.relative_to(src))
        text = path.read_text(encoding="utf-8")
        sizes.append((len(text.splitlines()), rel))
        tree = ast.parse(text)
        module = _module_name(path, src)
        top = {m for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
               for m in _imported_modules(n, module)}
        for func in (n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            length = (func.end_lineno or func.lineno) - func.lineno + 1
            if length > _LONG_FUNCTION:
                long_functions.append((length, f"{rel}::{func.name}"))
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    for name in _imported_modules(node, module):
                        where = f"{rel}:{node.lineno} {name}"
                        local.append(where)
                        if name in top:
                            redundant.append(where)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and _STRING_IMPORT.match(node.value)):
                strings.append(f"{rel}:{node.lineno} {node.value!r}")
    sizes.sort(reverse=True)
    long_functions.sort(reverse=True)
    return {"local": local, "redundant": redundant, "strings": strings,
            "sizes": sizes, "long_functions": long_functions}


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "src"
    shape = measure(src)
    print(f"function-local editalign imports: {len(shape['local'])}")
    print(f"redundant re-imports (module already imported at top): {len(shape['redundant'])}")
    for line in shape["redundant"]:
        print(f"  {line}")
    print(f"string imports: {len(shape['strings'])}")
    for line in shape["strings"]:
        print(f"  {line}")
    print("largest files:")
    for lines, rel in shape["sizes"][:5]:
        print(f"  {lines:5d} {rel}")
    print(f"functions > {_LONG_FUNCTION} lines: {len(shape['long_functions'])}")
    for lines, name in shape["long_functions"]:
        print(f"  {lines:5d} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
