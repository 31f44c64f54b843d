"""Who may import whom, checked by reading the source with ``ast`` (nothing is imported).

(a) The domain packages (everything but the front ends ``cli``, ``api``, ``web`` and the
composition root ``context.py``) never import :mod:`retroface.context`, FastAPI, Starlette,
Typer or Rich: rules live in the services, wiring in the context, translation in the front ends.
One module under a domain package is a composition root too and is named as such here:
``jobs/worker.py``, the RQ worker process, which builds the application context exactly as the
CLI does.

(b) The import graph of ``retroface`` modules is acyclic. Every import counts, including those
inside functions (a lazy import still ties two modules together), except two kinds of block that
never run when the module is imported: ``if TYPE_CHECKING:`` (annotations only) and
``if __name__ == "__main__":`` (``jobs/redis_queue.py`` hands over to the worker entry point
there, so that ``python -m retroface.jobs.redis_queue`` keeps working).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "retroface"
FRONT_ENDS = ("cli", "api", "web")
COMPOSITION_ROOTS = {"retroface.context", "retroface.jobs.worker"}
FORBIDDEN = ("retroface.context", "fastapi", "starlette", "typer", "rich")
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _skipped_block(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` never run on import."""
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
        return True
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node, at any depth (function bodies included), minus the skipped blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _skipped_block(child):
            yield from (n for s in child.orelse for n in (s, *_walk(s)))
            continue
        yield child
        yield from _walk(child)


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names of what ``module`` imports (``from a import b`` gives ``a.b``: the module
    ``a.b`` if there is one, else the name ``b`` of ``a``, which :func:`_graph` resolves)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _is_domain(module: str) -> bool:
    if module in COMPOSITION_ROOTS or module in ("retroface", "retroface.config"):
        return False
    parts = module.split(".")
    return len(parts) > 2 and parts[1] not in FRONT_ENDS


def _graph() -> dict[str, set[str]]:
    """Module -> the retroface modules it imports (names that are modules, not attributes)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for imported in _imports(name, path):
            # ``from retroface.x import y``: y may be a module or a name in x; keep what exists
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            # a package is initialised before its modules, so a module reaching its own package
            # (``from retroface.audit import export`` in audit/log.py) is no cycle
            if imported and not (name + ".").startswith(imported + "."):
                edges.add(imported)
        graph[name] = edges
    return graph


def test_the_walk_sees_every_package_and_lazy_imports() -> None:
    """Guard the guard: the domain set is what it should be and imports in functions count."""
    domain = {m.split(".")[1] for m in _modules() if _is_domain(m)}
    assert domain == {
        "core",
        "audit",
        "gallery",
        "governance",
        "search",
        "storage",
        "vision",
        "media",
        "jobs",
        "eval",
    }
    graph = _graph()
    # ray_batch imports media.footage only inside the function a Ray worker runs
    assert "retroface.media.footage" in graph["retroface.jobs.ray_batch"]
    # the worker entry point wires the application and is not domain code
    assert "retroface.context" in graph["retroface.jobs.worker"]


def test_domain_packages_import_no_front_end_and_no_context() -> None:
    offences = []
    for name, path in _modules().items():
        if not _is_domain(name):
            continue
        for imported in sorted(_imports(name, path)):
            if any(imported == f or imported.startswith(f + ".") for f in FORBIDDEN):
                offences.append(f"{name} imports {imported}")
    assert offences == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


@pytest.mark.parametrize(
    ("module", "route"),
    [
        ("retroface.api.routers.casework", "add_probe"),
        ("retroface.api.routers.gallery", "enrol_image"),
    ],
)
def test_routes_that_analyse_faces_do_not_run_on_the_event_loop(module: str, route: str) -> None:
    """A coroutine route would run face analysis on the event loop and stall every request;
    FastAPI runs a plain ``def`` route in its thread pool instead."""
    import importlib

    handler = getattr(importlib.import_module(module), route)
    assert not inspect.iscoroutinefunction(handler)


def test_no_api_route_is_a_coroutine() -> None:
    """Every route does database or model work, so none may be ``async def``: FastAPI runs plain
    ``def`` routes in its thread pool. (Exception handlers in ``api/app.py`` only build
    responses and may be coroutines.)"""
    routes, coroutines = [], []
    for path in sorted((SRC / "api" / "routers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            decorators = [d.func for d in node.decorator_list if isinstance(d, ast.Call)]
            if any(isinstance(d, ast.Attribute) and d.attr in HTTP_METHODS for d in decorators):
                routes.append(node.name)
                if isinstance(node, ast.AsyncFunctionDef):
                    coroutines.append(f"{path.name}:{node.name}")
    assert len(routes) > 30 and "add_probe" in routes and "enrol_image" in routes
    assert coroutines == []


def test_media_decodes_tracks_and_exports_only() -> None:
    """Casework on footage (cases, searches, audit) lives in ``search.footage``: ``media``
    builds on ``vision`` and ``core`` and nothing that knows about cases or the gallery."""
    graph = _graph()
    reached = {
        e.split(".")[1]
        for m, edges in graph.items()
        if m.startswith("retroface.media")
        for e in edges
    }
    assert reached <= {"core", "vision", "media"}
