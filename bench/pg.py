"""Throw-away PostgreSQL databases for the replica benchmarks (issue 15). Standard library + `psql`.

The server is named by `COMFYGATE_TEST_POSTGRES_URL` (as for the tests), e.g.
postgres://postgres@127.0.0.1:5432/test; each run gets a database `cgbench_<random>` of its own on
that server, created and dropped with `psql` (Python's standard library speaks no PostgreSQL).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess

ENV = "COMFYGATE_TEST_POSTGRES_URL"


class PgError(Exception):
    pass


def admin_url() -> str | None:
    """The server to create databases on, or None when the variable is unset."""
    url = os.environ.get(ENV, "").strip()
    return url or None


def _psql(url: str, sql: str, timeout: float = 30.0) -> str:
    if shutil.which("psql") is None:
        raise PgError("psql is not installed (apt-get install postgresql-client)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # only the URL decides
    try:
        r = subprocess.run(["psql", url, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PgError(f"psql did not answer within {timeout:.0f} s") from None
    if r.returncode != 0:
        raise PgError(f"psql exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return r.stdout.strip()


def unavailable() -> str | None:
    """Why the replica benchmarks cannot run here (None: they can)."""
    url = admin_url()
    if url is None:
        return f"{ENV} is not set"
    if not url.startswith(("postgres://", "postgresql://")):
        return f"{ENV} is not a postgres:// URL"
    try:
        _psql(url, "SELECT 1", timeout=10)
    except PgError as e:
        return f"PostgreSQL at {ENV} is not reachable: {e}"
    return None


def database_url(url: str, name: str) -> str:
    """`url` with its database replaced by `name` (query string kept)."""
    m = re.match(r"^(postgres(?:ql)?://[^/?#]*)(/[^?#]*)?(\?[^#]*)?$", url)
    if m is None:
        raise PgError(f"cannot parse {ENV} as postgres://user@host:port/database")
    return f"{m.group(1)}/{name}{m.group(3) or ''}"


class Database:
    """A database of its own on the server of `COMFYGATE_TEST_POSTGRES_URL`, dropped by `drop()`."""

    def __init__(self, template: str | None = None) -> None:
        """Empty, or a copy of the database `template` (which nobody may be connected to meanwhile)."""
        admin = admin_url()
        if admin is None:
            raise PgError(f"{ENV} is not set")
        if template is not None and not re.fullmatch(r"cgbench_[0-9a-f]{12}", template):
            raise PgError(f"not a benchmark database: {template!r}")
        self.admin = admin
        self.name = f"cgbench_{secrets.token_hex(6)}"
        _psql(admin, f"CREATE DATABASE {self.name}" + (f" TEMPLATE {template}" if template else ""))
        self.url = database_url(admin, self.name)

    def drop(self) -> None:
        # WITH (FORCE): a gateway killed a moment ago may still have sessions open (PostgreSQL >= 13).
        _psql(self.admin, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.drop()
