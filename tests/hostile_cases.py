"""Hostile requests, generated: every route x every parameter x a list of hostile values.

Each case changes one parameter of an otherwise valid request, so the hostile value is what the
server meets, not an earlier validation error of another field. The values are those an
adversarial review found to cause 500s (NUL bytes, integers past 2^31 and 2^63, strings past
their columns, ``..`` file names, years 1 and 9999) and their relatives: control characters,
bidirectional overrides, zero-width characters, lone surrogates, invalid UTF-8, 10 kB strings,
wrong JSON types and shapes, deeply nested JSON.

The seed the cases expect (see tests/test_hostile_input.py): an authorised case ``HX/1`` with
probe 1 and search 1, a pending case ``HX/2``, a gallery subject ``AJ_Cook``, an empty folder
``present`` in the import folder, and a caller holding every role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

CASE = "HX/1"
PENDING_CASE = "HX/2"
SUBJECT = "AJ_Cook"
IMPORT_FOLDER = "present"  # an empty folder in the import folder: a job that enrols nothing

#: Text: one of each kind of character a store or a reader can trip over, and each length limit.
TEXT: dict[str, str] = {
    "empty": "",
    "blank": "   ",
    "nul": "CR\x00123",
    "nul_only": "\x00",
    "control": "a\x01\x07\x1b[2Jb",
    "newline": "CR\n123",
    "carriage_return": "CR\r123",
    "tab": "CR\t123",
    "del": "CR\x7f123",
    "c1_control": "CR\x85123",
    "rtl_override": "CR\u202e321",
    "zero_width_space": "CR\u200b123",
    "zero_width_joiner": "CR\u200d123",
    "bom": "\ufeffCR123",
    "line_separator": "CR\u2028123",
    "fullwidth": "\uff23\uff32\uff11\uff12\uff13",
    "lone_surrogate": "CR\ud800",
    "emoji": "\U0001f600" * 30,
    "combining_flood": "e" + "\u0301" * 300,
    "len_101": "x" * 101,
    "len_201": "x" * 201,
    "len_501": "x" * 501,
    "len_5001": "x" * 5001,
    "len_10k": "y" * 10_000,
    "dotdot": "..",
    "slash": "/",
    "traversal": "../../etc/passwd",
    "percent_nul": "%00",
    "sql": "' OR 1=1; DROP TABLE cases; --",
    "markup": "<script>alert(1)</script>",
}

#: Integers and things that are not integers, for JSON fields and form fields.
NUMBER: dict[str, Any] = {
    "zero": 0,
    "negative": -1,
    "int32_overflow": 2**31,
    "int63_overflow": 2**63,
    "int64_overflow": 2**64,
    "huge": 10**40,
    "fraction": 1.5,
    "nan": float("nan"),
    "infinity": float("inf"),
    "string": "1",
    "word": "abc",
    "null": None,
    "bool": True,
    "list": [1],
    "object": {"a": 1},
}

#: Integers in a path or query string (already URL-encoded).
RAW_INT: dict[str, str] = {
    "zero": "0",
    "negative": "-1",
    "int32_overflow": "2147483648",
    "int63_overflow": "9223372036854775808",
    "int64_overflow": "18446744073709551616",
    "huge": "9" * 40,
    "fraction": "1.5",
    "exponent": "1e3",
    "word": "abc",
    "nul": "%00",
    "space": "%20",
    "invalid_utf8": "%ff",
}

#: Report period bounds (query strings, URL-encoded).
DATES: dict[str, str] = {
    "year_1": "0001-01-01T00:00:00Z",
    "year_9999": "9999-12-31T23:59:59Z",
    "year_1969": "1969-12-31T00:00:00Z",
    "year_2101": "2101-01-01T00:00:00Z",
    "naive": "2026-01-01T00:00:00",
    "date_only": "2026-01-01",
    "bad_month": "2026-13-45T00:00:00Z",
    "offset_extreme": "2026-01-01T00:00:00%2B23:59",
    "word": "yesterday",
    "nul": "%00",
    "huge_epoch": "99999999999999999999",
    "empty": "",
}

#: Whole JSON bodies of the wrong shape.
SHAPES: dict[str, bytes] = {
    "array": b"[]",
    "string": b'"x"',
    "number": b"1",
    "null": b"null",
    "truncated": b'{"a": ',
    "not_utf8": b'{"a": "\xff\xfe"}',
    "deep_nesting": b"[" * 5000 + b"]" * 5000,
    "empty": b"",
    "huge_key": json.dumps({"k" * 100_000: 1}).encode(),
}


@dataclass(frozen=True)
class HostileCase:
    """One request: ``url`` is already encoded; a body is ``json_body`` (raw bytes) or a form."""

    id: str
    route: str
    method: str
    url: str
    json_body: bytes | None = None
    form: dict[str, Any] | None = None
    filename: str | None = None
    auth: bool = True
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """A route with a valid request; ``{name}`` placeholders in ``path`` name ``path_params``."""

    method: str
    path: str
    path_params: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (kind, valid)
    query: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (kind, valid)
    body: dict[str, Any] | None = None
    body_kinds: dict[str, str] = field(default_factory=dict)  # field: "text" | "number" | "list"
    form: dict[str, str] | None = None
    form_kinds: dict[str, str] = field(default_factory=dict)
    upload: bool = False
    auth: bool = True

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def _image_route(path: str, form: dict[str, str], kinds: dict[str, str], **pp: Any) -> Route:
    return Route("POST", path, path_params=pp, form=form, form_kinds=kinds, upload=True)


ROUTES: list[Route] = [
    Route(
        "POST",
        "/api/v1/auth/token",
        body={"username": "nobody", "password": "not the password", "ttl_days": 1},
        body_kinds={"username": "text", "password": "text", "ttl_days": "number"},
        auth=False,
    ),
    Route(
        "POST",
        "/api/v1/users",
        body={"username": "hx-new", "roles": ["reviewer"], "display_name": "H X"},
        body_kinds={
            "username": "text",
            "display_name": "text",
            "password": "text",
            "roles": "list",
        },
    ),
    Route("POST", "/api/v1/users/{u}/disable", path_params={"u": ("text", "hx-nobody")}),
    Route(
        "POST",
        "/api/v1/users/{u}/tokens",
        path_params={"u": ("text", "hx-nobody")},
        body={"name": "t", "ttl_days": 1},
        body_kinds={"name": "text", "ttl_days": "number"},
    ),
    Route(
        "GET",
        "/api/v1/cases",
        query={"status": ("text", "pending"), "offset": ("int", "0"), "limit": ("int", "10")},
    ),
    Route(
        "POST",
        "/api/v1/cases",
        body={
            "reference": "HX/NEW",
            "offence_category": "robbery",
            "purpose": "identify the suspect",
            "justification": "the still from CCTV is the only lead",
        },
        body_kinds={
            "reference": "text",
            "offence_category": "text",
            "purpose": "text",
            "justification": "text",
            "urgent": "number",
        },
    ),
    Route("GET", "/api/v1/cases/{ref}", path_params={"ref": ("text", CASE)}),
    Route(
        "POST",
        "/api/v1/cases/{ref}/decision",
        path_params={"ref": ("text", PENDING_CASE)},
        body={"approve": True, "note": "necessary and proportionate", "valid_days": 1},
        body_kinds={"note": "text", "valid_days": "number", "approve": "number"},
    ),
    _image_route(
        "/api/v1/cases/{ref}/probes",
        {"source": "CCTV", "how_obtained": "exported from the DVR, exhibit AB/1"},
        {"source": "text", "how_obtained": "text", "filename": "text"},
        ref=("text", CASE),
    ),
    Route(
        "POST",
        "/api/v1/searches",
        body={"case": CASE, "probe_id": 1, "top_k": 5},
        body_kinds={
            "case": "text",
            "probe_id": "number",
            "face": "number",
            "top_k": "number",
            "threshold": "number",
        },
    ),
    Route(
        "POST",
        "/api/v1/probes/{id}/enhancements",
        path_params={"id": ("int", "1")},
        body={"steps": [{"op": "gamma", "gamma": 1.2}]},
        body_kinds={"steps": "list"},
    ),
    Route("GET", "/api/v1/searches/{id}", path_params={"id": ("int", "1")}),
    Route("GET", "/api/v1/searches/{id}/export", path_params={"id": ("int", "1")}),
    Route("GET", "/api/v1/reviews/{id}", path_params={"id": ("int", "1")}),
    Route(
        "POST",
        "/api/v1/reviews/{id}",
        path_params={"id": ("int", "1")},
        body={"decision": "no match", "note": "different person"},
        body_kinds={"decision": "text", "note": "text", "candidate_rank": "number"},
    ),
    Route(
        "GET",
        "/api/v1/probes/{id}/faces/{n}.jpg",
        path_params={"id": ("int", "1"), "n": ("int", "0")},
        query={"blur_all": ("text", "true")},
    ),
    Route(
        "GET",
        "/api/v1/probes/{id}/image.jpg",
        path_params={"id": ("int", "1")},
        query={"keep": ("int", "0"), "max_side": ("int", "256")},
    ),
    Route(
        "GET",
        "/api/v1/searches/{id}/candidates/{rank}/aligned.jpg",
        path_params={"id": ("int", "1"), "rank": ("int", "1")},
        query={"size": ("int", "128")},
    ),
    Route(
        "GET",
        "/api/v1/searches/{id}/candidates/{rank}/landmarks",
        path_params={"id": ("int", "1"), "rank": ("int", "1")},
        query={"size": ("int", "128")},
    ),
    Route("GET", "/api/v1/gallery/subjects", query={"offset": ("int", "0"), "limit": ("int", "5")}),
    Route("GET", "/api/v1/gallery/subjects/{ref}", path_params={"ref": ("text", SUBJECT)}),
    Route(
        "DELETE",
        "/api/v1/gallery/subjects/{ref}",
        path_params={"ref": ("text", "hx-absent")},
        query={"reason": ("text", "request from the data subject")},
    ),
    _image_route(
        "/api/v1/gallery/subjects/{ref}/images",
        {"inclusion_reason": "custody", "source": "custody suite"},
        {"inclusion_reason": "text", "source": "text", "filename": "text", "face": "number"},
        ref=("text", "hx-upload"),
    ),
    Route(
        "POST",
        "/api/v1/gallery/enrolments",
        body={"paths": [IMPORT_FOLDER], "source": "import"},
        body_kinds={
            "paths": "list",
            "inclusion_reason": "text",
            "source": "text",
            "multi_face": "text",
        },
    ),
    Route("GET", "/api/v1/jobs", query={"offset": ("int", "0"), "limit": ("int", "5")}),
    Route("GET", "/api/v1/jobs/{id}", path_params={"id": ("int", "1")}),
    Route("POST", "/api/v1/jobs/{id}/cancel", path_params={"id": ("int", "1")}),
    Route(
        "GET",
        "/api/v1/reports/transparency",
        query={
            "from": ("date", "2026-01-01T00:00:00Z"),
            "to": ("date", "2026-02-01T00:00:00Z"),
        },
    ),
    Route("GET", "/api/v1/reports/oversight", query={"months": ("int", "12")}),
    Route("POST", "/api/v1/retention/run", query={"dry_run": ("text", "true")}),
]


def _path_text(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _url(route: Route, path_values: dict[str, str], query: dict[str, str]) -> str:
    path = route.path
    for name, raw in path_values.items():
        path = path.replace("{" + name + "}", raw)
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return path


def _json(body: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \\ud800 escapes: valid JSON a client can send
    return json.dumps(body, ensure_ascii=True).encode()


def _form_value(value: Any) -> str | bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: send the invalid UTF-8 as such
            return value.encode("utf-8", "surrogatepass")
    return json.dumps(value) if not isinstance(value, int | float) else str(value)


def _header_text(value: Any) -> str:
    """A multipart file name a client can send: a lone surrogate goes as its raw bytes."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def cases() -> list[HostileCase]:
    """Every hostile request, each with a unique, readable id."""
    return [case for route in ROUTES for case in _route_cases(route)]


def _route_cases(route: Route) -> list[HostileCase]:
    out: list[HostileCase] = []
    valid_path = {n: _path_text(v) if k == "text" else v for n, (k, v) in route.path_params.items()}
    valid_query = {n: _path_text(v) if k == "text" else v for n, (k, v) in route.query.items()}

    def add(label: str, **kw: Any) -> None:
        kw.setdefault("url", _url(route, valid_path, valid_query))
        if route.body is not None:
            kw.setdefault("json_body", _json(route.body))
        if route.form is not None:
            kw.setdefault("form", dict(route.form))
            kw.setdefault("filename", "probe.jpg")
        out.append(
            HostileCase(
                id=f"{route.name} {label}",
                route=route.name,
                method=route.method,
                auth=route.auth,
                **kw,
            )
        )

    for name, (kind, _) in route.path_params.items():
        values = (
            {k: _path_text(v) for k, v in TEXT.items() if v not in ("", "/")}
            if kind == "text"
            else RAW_INT
        )
        for label, raw in values.items():
            add(f"path {name}={label}", url=_url(route, {**valid_path, name: raw}, valid_query))
    for name, (kind, _) in route.query.items():
        values = {"text": {k: _path_text(v) for k, v in TEXT.items()}, "int": RAW_INT}.get(
            kind, DATES
        )
        for label, raw in values.items():
            add(f"query {name}={label}", url=_url(route, valid_path, {**valid_query, name: raw}))
    if route.body is not None:
        for name, kind in route.body_kinds.items():
            values: dict[str, Any] = dict(NUMBER if kind == "number" else TEXT)
            if kind == "list":
                values = {f"[{k}]": [v] for k, v in TEXT.items()} | {
                    "not_a_list": "x",
                    "empty_list": [],
                    "list_of_numbers": [1, 2],
                    "huge_list": ["a"] * 10_000,
                }
            elif kind == "text":
                values |= {"number": 1, "null": None, "list": ["x"], "object": {}}
            for label, value in values.items():
                add(f"body {name}={label}", json_body=_json({**(route.body or {}), name: value}))
        for label, raw in SHAPES.items():
            add(f"body shape={label}", json_body=raw)
    if route.form is not None:
        for name, kind in route.form_kinds.items():
            values = dict(NUMBER if kind == "number" else TEXT)
            for label, value in values.items():
                if name == "filename":
                    add(f"filename={label}", filename=_header_text(value))
                else:
                    form = {**route.form, name: _form_value(value)}
                    add(f"form {name}={label}", form=form)
    return out
