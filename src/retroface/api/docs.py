"""The API's own documentation, served without any third-party host.

FastAPI's default docs page loads Swagger UI from a CDN (and a favicon from fastapi's site): on an
air-gapped network it is blank, and elsewhere every visit tells the CDN who reads the docs. Here:

- when the ``fastapi-offline`` package is installed (it ships Swagger UI and ReDoc, MIT), its
  files are served from ``/api/v1/docs/assets/`` and ``/api/v1/docs`` and ``/api/v1/redoc`` are
  the full interactive pages;
- otherwise ``/api/v1/docs`` is a small self-contained page (inline script and style, nothing
  fetched but the OpenAPI document) listing every operation with its roles, parameters and
  responses, and ``/api/v1/redoc`` is the same page.

Whether these routes and ``/api/v1/openapi.json`` need a token is ``RETROFACE_PUBLIC_DOCS``
(see :mod:`retroface.api.rbac` and docs/api.md).
"""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from retroface.core.errors import NotFoundError

P = "/api/v1"
OPENAPI_URL = f"{P}/openapi.json"
DOCS_URL = f"{P}/docs"
REDOC_URL = f"{P}/redoc"
ASSETS_URL = f"{P}/docs/assets"

#: The files of fastapi-offline's that the pages use; nothing else is served from its folder.
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def offline_assets() -> Path | None:
    """fastapi-offline's folder of Swagger UI and ReDoc files, if that package is installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if all((folder / name).is_file() for name in ASSET_TYPES) else None


def add_docs_routes(app: FastAPI, assets: Path | None) -> None:
    """The schema, the docs pages and their assets (outside the OpenAPI document itself)."""

    @app.get(OPENAPI_URL, include_in_schema=False)
    def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    if assets is None:
        page = HTMLResponse(minimal_docs_html(app.title))

        @app.get(DOCS_URL, include_in_schema=False)
        def docs_page() -> HTMLResponse:
            return page

        @app.get(REDOC_URL, include_in_schema=False)
        def redoc_page() -> HTMLResponse:
            return page

        return

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_page() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            # Swagger UI would otherwise send the schema's URL to validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_URL,
            title=f"{app.title} API",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in ASSET_TYPES:  # a fixed list: no path from the request reaches the disk
            raise NotFoundError(f"no docs asset {name!r}")
        return FileResponse(
            assets / name,
            media_type=ASSET_TYPES[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )


def minimal_docs_html(title: str) -> str:
    """A docs page that needs nothing but the OpenAPI document from this server."""
    return _MINIMAL.replace("__TITLE__", html.escape(title)).replace("__OPENAPI__", OPENAPI_URL)


# Text from the schema is inserted with textContent only, never as HTML.
_MINIMAL = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ API</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; }
details { border: 1px solid #ccc; border-radius: 4px; margin: .4em 0; padding: .3em .6em; }
summary { cursor: pointer; }
.m { display: inline-block; min-width: 4.5em; font-weight: bold; font-family: monospace; }
code, pre { font-family: monospace; background: #f4f4f4; }
pre { padding: .5em; overflow: auto; white-space: pre-wrap; }
p.note { color: #555; }
</style>
</head>
<body>
<h1>__TITLE__ API</h1>
<p class="note">The OpenAPI document: <a href="__OPENAPI__">__OPENAPI__</a>.
Authenticate with <code>Authorization: Bearer &lt;token&gt;</code> (docs/api.md).</p>
<div id="info"></div>
<div id="ops">Loading the OpenAPI document&hellip;</div>
<script>
"use strict";
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function ref(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  return JSON.stringify(schema);
}
fetch("__OPENAPI__", {credentials: "same-origin"}).then(r => {
  if (!r.ok) throw new Error("HTTP " + r.status + " fetching the OpenAPI document");
  return r.json();
}).then(doc => {
  const info = document.getElementById("info");
  info.appendChild(el("p", (doc.info.description || "") + " Version " + doc.info.version + "."));
  const ops = document.getElementById("ops");
  ops.textContent = "";
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const d = el("details");
      const s = el("summary");
      s.appendChild(el("span", method.toUpperCase(), "m"));
      s.appendChild(el("code", path));
      s.appendChild(document.createTextNode(" " + (op.summary || "")));
      d.appendChild(s);
      if (op.description) d.appendChild(el("p", op.description));
      for (const p of op.parameters || []) {
        d.appendChild(el("p", p.in + " " + p.name + (p.required ? " (required)" : "") +
                              ": " + ref(p.schema)));
      }
      if (op.requestBody) {
        for (const [type, c] of Object.entries(op.requestBody.content || {})) {
          d.appendChild(el("p", "body " + type + ": " + ref(c.schema)));
        }
      }
      for (const [code, r] of Object.entries(op.responses || {})) {
        d.appendChild(el("p", code + ": " + (r.description || "")));
      }
      ops.appendChild(d);
    }
  }
  const schemas = (doc.components || {}).schemas || {};
  ops.appendChild(el("h2", "Schemas"));
  for (const [name, schema] of Object.entries(schemas)) {
    const d = el("details");
    d.appendChild(el("summary", name));
    d.appendChild(el("pre", JSON.stringify(schema, null, 2)));
    ops.appendChild(d);
  }
}).catch(err => { document.getElementById("ops").textContent = String(err); });
</script>
</body>
</html>
"""
