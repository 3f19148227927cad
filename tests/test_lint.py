"""The code base stays ruff-clean and keeps its boundaries: Ray only in ``ray_*`` modules, the library never imports
the harness, no import cycle inside ``trcgl``, and no function-local import of another ``trcgl`` module without a
stated reason."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "trcgl"
LAZY_MARK = "# lazy:"  # a function-local import of a trcgl module says why on its line or the line above


def module_name(path: Path) -> str:
    """``trcgl/data/prepare.py`` → ``trcgl.data.prepare``; a package's ``__init__.py`` → the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def imported_names(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """Absolute dotted names an import statement can load (relative imports resolved against ``importer``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: top level, and inside top-level if/try blocks (not under
    ``if TYPE_CHECKING``)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not is_type_checking(node):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
    return found


def function_local_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the ``trcgl`` modules its import executes (the named module and its not-yet-entered packages)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for node in module_level_imports(tree):
            for target in imported_names(node, name, path.name == "__init__.py"):
                if target not in modules:
                    continue
                # importing a.b.c runs a, a.b and a.b.c; the packages the importer sits in are already running
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_ruff_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "trcgl", "trcgl_dev", "jobs", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_only_ray_modules_import_ray():
    offenders = []
    for name, path in library_modules().items():
        if path.name.startswith("ray_"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = imported_names(node, name, path.name == "__init__.py")
                if any(n == "ray" or n.startswith("ray.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"only trcgl/**/ray_*.py may import ray: {offenders}"


def test_library_never_imports_the_harness():
    offenders = []
    for name, path in library_modules().items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = imported_names(node, name, path.name == "__init__.py")
                if any(n.split(".")[0] in ("trcgl_dev", "tests", "jobs") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"trcgl must not import trcgl_dev, tests or jobs: {offenders}"


def test_no_import_cycle_in_the_library():
    cycle = find_cycle(import_graph(library_modules()))
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle or [])


def test_cycle_check_sees_a_cycle():
    """The checker itself: a two-module cycle, and a cycle through a package's __init__, are found."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) is not None
    assert find_cycle({"p": {"p.x"}, "p.x": {"q"}, "q": {"p"}}) is not None
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_local_library_imports_state_why():
    offenders = []
    for name, path in library_modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), str(path))
        for node in function_local_imports(tree):
            names = imported_names(node, name, path.name == "__init__.py")
            if not any(n.split(".")[0] == "trcgl" for n in names):
                continue
            here = lines[node.lineno - 1]
            above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
            if LAZY_MARK not in here and not above.startswith(LAZY_MARK):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], (
        f"a function-local import of a trcgl module needs a '{LAZY_MARK} <reason>' comment (a heavy optional "
        f"dependency), else import it at module level: {offenders}"
    )


def test_library_names_no_files_outside_the_repository():
    """Code and docstrings cite what a reader can open: not notes files that live outside the repository."""
    outside = ("RAY_NOTES", "RELIABILITY_NOTES", "DESIGN.md", "FINDINGS.md", "STYLE.md")
    offenders = []
    for folder in ("trcgl", "trcgl_dev", "jobs", "cluster", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".md", ".json") or not path.is_file() or path.name == "test_lint.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if any(word in line for word in outside):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert offenders == [], f"references to files that are not in the repository: {offenders}"
