"""The casework services, the API and the CLI share one set of result models (issue #10)."""

from __future__ import annotations

from typing import Any, get_args

from fastapi.routing import APIRoute

from retroface.api import schemas
from retroface.api.routers import casework
from retroface.governance import views as gov_views
from retroface.search import views as search_views


def _model(annotation: Any) -> Any:
    """``list[X]`` → ``X``."""
    return (get_args(annotation) or (annotation,))[0]


def test_casework_routes_answer_with_the_domain_models() -> None:
    domain = {
        m
        for mod in (gov_views, search_views)
        for m in vars(mod).values()
        if isinstance(m, type) and m.__module__ == mod.__name__
    }
    routes = [r for r in casework.router.routes if isinstance(r, APIRoute)]
    models = {r.name: _model(r.response_model) for r in routes}
    # every route has one (or a union of them), from there
    assert all(set(get_args(m) or (m,)) <= domain for m in models.values()), models
    assert models["search"] is search_views.SearchResult
    assert set(get_args(models["search_batch"])) == {
        search_views.BatchSearchResult,
        search_views.BatchSearchFailure,
    }
    assert models["export_search"] is search_views.SearchExport
    assert models["review_show"] is gov_views.ReviewSheet
    # no second copy of a result model left in the API's schemas
    assert not {"CaseOut", "SearchOut", "ProbeOut", "ReviewView", "QueueItem"} & set(vars(schemas))
