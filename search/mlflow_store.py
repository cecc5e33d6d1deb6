"""Opening an MLflow tracking store that many processes share (searches, review, finalize, baselines).

* **Creating a SQLite store** runs MLflow's schema migrations, which two processes must not run at once
  (two searches started together on a new ``--out-dir`` both died in alembic and left the file
  half-migrated, unusable by every later process). The first open of a SQLite store in a process
  therefore holds a file lock beside it (``mlflow.db.lock``); a second process waits there until the
  first has created the store, then opens the finished one.
* **Write-ahead logging**: the store is switched to SQLite's WAL journal once, while the lock is held
  (readers then never block the writer and the writer never blocks readers; measured in
  benchmarks/shared_store.py).
* **A busy store** (another process holding SQLite's write lock past its 5 s timeout, or a tracking
  server answering 503) is retried, bounded: ``RETRIES`` attempts with doubling waits, then the error.
* **A server that went away**: MLflow's own HTTP retries are bounded too (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
  and ``..._TIMEOUT`` default to a few attempts and 20 s here instead of ~2 min), so a search stops with
  one line soon after the server does, and stays resumable.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

RETRIES = 6  # attempts at a call the store refused as busy (waits 0.5, 1, 2, 4, 8 s between them)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
WAL = os.environ.get("M2MDC_MLFLOW_WAL", "1") != "0"  # 0: keep SQLite's rollback journal (for the A/B measurement)
_opened: set[str] = set()  # SQLite stores this process has created or checked under the lock


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if urlparse(uri).scheme == "sqlite" else None


def busy(exc: BaseException) -> bool:
    """Whether an MLflow error says the store is momentarily busy: SQLite's write lock held by another
    process past its timeout (a full disk or a read-only file is not retried)."""
    # mlflow costs 0.5-1.3 s to import (python -X importtime): the CLIs importing this module (search/frontier.py,
    # analysis/export.py, ...) do not pay it for --help or a bad argument
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and "database is locked" in str(exc)


STORE_FAILURES = ("disk is full", "readonly database", "disk I/O error")  # a machine's failure, not MLflow's


class _ReportedElsewhere(logging.Filter):
    """MLflow logs a traceback for every SQLite error it meets: a lock is retried here, and a full or
    read-only disk stops the search with one line (search/driver.py), so neither is logged twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        return not any(k in text for k in ("database is locked", *STORE_FAILURES))


class RetryingClient:
    """An MlflowClient whose calls are retried, bounded, while the store is busy."""

    retried = 0  # retries this process made (benchmarks/shared_store.py reports them)

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            for attempt in range(RETRIES):
                try:
                    return attr(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - only a busy store is retried
                    if not busy(e) or attempt == RETRIES - 1:
                        raise
                    RetryingClient.retried += 1
                    time.sleep(0.5 * 2 ** attempt)
        return call


def open_client(uri: str) -> RetryingClient:
    """An MLflow client on ``uri``; a SQLite store is created (or checked) under its file lock, once
    per process, and set to WAL."""
    from mlflow.tracking import MlflowClient  # 0.5-1.3 s to import: see busy()

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("mlflow.store.db.utils").addFilter(_ReportedElsewhere())
    path = sqlite_path(uri)
    if path is None or uri in _opened:
        return RetryingClient(MlflowClient(tracking_uri=uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        client = MlflowClient(tracking_uri=uri)  # opening a SQLite store creates or upgrades its tables
        client.search_experiments(max_results=1)
        if WAL:
            with closing(sqlite3.connect(path, timeout=30)) as con:
                con.execute("PRAGMA journal_mode=WAL")
    _opened.add(uri)
    return RetryingClient(client)
