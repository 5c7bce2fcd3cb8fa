"""The floors of the package (STYLE.md): each folder imports only from the folders below it, so
that a change to a floor cannot reach down, and a new module knows where it may go.

    serve      the command line, the WSGI entry point, dev mode, CPU affinity
    web        Flask: the app factory, views, headers, load shedding, /js/
    grant      the grants on one pipeline, HTTP-free: the record, token exchange and its steps,
               clients, introspection
    sources    key sets, HTTP, stores, our keys, resilience, permission sources
    config     the declared model and the settings
    obs        logs and metrics
    oauth      the vocabulary: errors, JOSE, JWT and DPoP checks, conditions, URIs

Every import counts, those under ``TYPE_CHECKING`` and inside functions too. ``verify.py`` (the
downstream API's library) may import ``oauth``, ``obs`` and ``sources``; ``wsgi.py`` is the
public entry point ``token_exchange.wsgi:app`` and imports ``serve``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "token_exchange"
FLOORS = ("oauth", "obs", "config", "sources", "grant", "web", "serve")
#: What the modules at the top of the package may import.
TOP = {"verify": {"oauth", "obs", "sources"}, "wsgi": {"serve"}, "__init__": set()}


def imports(path: Path) -> set[str]:
    """The floors (or top modules) of ``token_exchange`` that ``path`` imports."""
    here = path.relative_to(PACKAGE).parts[:-1]  # the folder of the module
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
                parts = [*base, *(node.module.split(".") if node.module else [])]
                if not parts:  # `from . import x` at the top: x itself
                    parts = [alias.name for alias in node.names]
            elif node.module and node.module.split(".")[0] == "token_exchange":
                parts = node.module.split(".")[1:] or [a.name for a in node.names]
            else:
                continue
            found.update(parts[:1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "token_exchange" and len(names) > 1:
                    found.add(names[1])
    return found


def test_each_floor_imports_only_the_floors_below_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) == 1:
            allowed = TOP[path.stem]
        else:
            floor = parts[0]
            allowed = set(FLOORS[: FLOORS.index(floor) + 1])
        if bad := imports(path) - allowed:
            wrong.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not wrong, "\n".join(wrong)


def test_every_module_is_on_a_floor() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(FLOORS)
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(TOP)


def test_no_module_imports_itself_round_about() -> None:
    """No circles between modules either (a floor may import its own modules)."""
    graph: dict[str, set[str]] = {}
    modules = {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")
    }
    for name, path in modules.items():
        here = path.relative_to(PACKAGE).parts[:-1]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
                target = [*base, *(node.module.split(".") if node.module else [])]
                candidates = [".".join(target)] + [".".join([*target, a.name]) for a in node.names]
                edges.update(c for c in candidates if c in modules and c != name)
        graph[name] = edges
    seen: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in seen:
                visit(nxt, [*stack, nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    assert not cycles, cycles


def test_no_test_file_name_is_in_both_layers() -> None:
    """``tests/unit`` holds the socket-free tests, the rest of ``tests/`` the end-to-end ones: a
    name in both would leave a reader (and pytest's rootdir-relative ids) guessing."""
    tests = Path(__file__).parents[1]
    unit = {p.name for p in tests.glob("unit/test_*.py")}
    assert not unit & {p.name for p in tests.glob("test_*.py")}
