"""A PostgreSQL database for a benchmark: the one given (``--postgres URL``), or a fresh one in
a throw-away cluster (tests/postgres.py) that lives as long as the ``with`` block."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def database(url: str | None, name: str, who: str) -> Iterator[str]:
    """``url``, or the URL of database ``name`` in a throw-away cluster; ``who`` (the
    benchmark) names the caller when no cluster can be made here."""
    if url is not None:
        yield url
        return
    sys.path.insert(0, str(ROOT))
    from tests.postgres import available, cluster

    why = available()
    if why is not None:
        raise SystemExit(f"{who}: no PostgreSQL cluster: {why} (or --postgres)")
    with cluster() as pg:
        pg.execute(f"CREATE DATABASE {name}")
        yield f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{name}"
