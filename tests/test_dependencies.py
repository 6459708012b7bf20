"""Every route dependency is a coroutine: FastAPI runs a plain `def` one in a worker thread, a
hand-off there and back on every request (a one-patient transaction paid for one)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute

from api.app import create_app


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def _is_async(call: Any) -> bool:
    method = type(call).__call__ if not inspect.isfunction(call) else None  # a class instance
    return any(
        inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (call, method)
    )


def _routers(app_routes: list[Any]) -> Iterator[APIRouter]:
    for route in app_routes:
        router = getattr(route, "original_router", None)  # an included router
        if isinstance(router, APIRouter):
            yield router
            yield from _routers(router.routes)


def test_no_route_dependency_runs_in_a_thread() -> None:
    app = create_app()
    routers = list(_routers(app.routes))
    routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    routes += [r for r in app.routes if isinstance(r, APIRoute)]
    calls: dict[str, Any] = {}
    for route in routes:
        for call in _calls(route.dependant):
            calls[
                f"{sorted(route.methods or ())} {route.path}: {getattr(call, '__qualname__', call)}"
            ] = call
    for router in routers:  # a router's own dependencies, and theirs
        for depends in router.dependencies:
            calls[f"router {router.prefix}: {depends.dependency}"] = depends.dependency
            assert depends.dependency is not None
            for call in _calls(get_dependant(path="", call=depends.dependency)):
                calls[f"router {router.prefix}: {call}"] = call
    assert len(routes) > 40  # the whole API was walked
    assert {name for name, call in calls.items() if not _is_async(call)} == set()
