"""SQL expressions that SQLite and PostgreSQL spell differently, compiled per dialect.

Reports group by calendar month in the database (``GROUP BY`` on a month key) rather than fetching
every timestamp: a year of searches is one row per month and action, however many searches ran.
SQLite stores our timestamps as UTC text (``2026-11-30 23:59:59.000000``, see
``storage.tables.UTCDateTime``), so its month is ``strftime('%Y-%m', ts)``; PostgreSQL stores
``timestamptz`` and formats it in the session's time zone, so the value is first converted to UTC
(``ts AT TIME ZONE 'UTC'``) or a late-evening record would land in the next month west of UTC
(and an early-morning one in the previous month east of it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement


class utc_month(FunctionElement[str]):
    """``'YYYY-MM'`` of a UTC timestamp column, for ``GROUP BY``."""

    type = String()
    inherit_cache = True
    name = "utc_month"


@compiles(utc_month, "sqlite")
def _utc_month_sqlite(element: utc_month, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%Y-%m', {compiler.process(element.clauses, **kw)})"


@compiles(utc_month, "postgresql")
def _utc_month_postgresql(element: utc_month, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC', 'YYYY-MM')"


@compiles(utc_month)
def _utc_month_other(element: utc_month, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError(f"utc_month is not defined for {compiler.dialect.name}")


class json_array_length(FunctionElement[int]):
    """The length of the JSON array under top-level ``key`` of a JSON column (NULL if absent)."""

    type = Integer()
    inherit_cache = False  # the key is written into the SQL text, so no shared cached form
    name = "json_array_length"

    def __init__(self, column: ColumnElement[Any] | QueryableAttribute[Any], key: str) -> None:
        if not key.isidentifier():  # it is written into the SQL text
            raise ValueError(f"not a plain JSON key: {key!r}")
        self.key = key
        super().__init__(column)


@compiles(json_array_length, "sqlite")
def _json_len_sqlite(element: json_array_length, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_array_length({compiler.process(element.clauses, **kw)}, '$.{element.key}')"


@compiles(json_array_length, "postgresql")
def _json_len_postgresql(element: json_array_length, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"json_array_length(({column})::json -> '{element.key}')"


@compiles(json_array_length)
def _json_len_other(element: json_array_length, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError(f"json_array_length is not defined for {compiler.dialect.name}")
