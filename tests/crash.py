"""Killing a search and resuming it, shared by the crash-consistency tests and benchmarks/crash_kills.py.

A search runs as its own process group (what a job scheduler or a terminal kills); a kill is SIGKILL of
that group, either at a named fault-injection point (search/faults.py, armed through the environment)
or at a moment chosen from outside. Every function returns what happened rather than asserting, so a
benchmark can count outcomes where a test asserts them.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEAN = REPO / "tests" / "data" / "space-lean.yaml"
SEEDED = REPO / "tests" / "data" / "space-seeded.yaml"  # takes the seeded baselines and the prior
BUDGET = 0.02


@dataclass
class Search:
    """One frontier search on digits (smoke profile) under ``out``, with the arguments a harness fixes:
    the random sampler and a fixed seed, so every run of it draws the same configurations."""

    out: Path
    name: str
    num_samples: int = 6
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cpus: int = 2  # per trial
    mlflow_uri: str | None = None  # default: OUT/mlflow.db
    logs: Path | None = None  # where its log and fault log go (default OUT; elsewhere for a disk that fills)
    seed_baselines: bool = False  # start with the seeded baselines and prior the space can take
    space: Path = LEAN
    bands: int = 1  # cost bands promotion picks its one trial of each from

    @property
    def exp_dir(self) -> Path:
        return self.out / "search" / self.name

    def command(self, resume: bool = False) -> list[str]:
        return [sys.executable, "search/frontier.py", "--budget-gmacs", str(BUDGET), "--profile", "smoke",
                "--dataset", "digits", "--out-dir", str(self.out), "--space", str(self.space), "--name", self.name,
                "--num-samples", str(self.num_samples), "--sampler", "random", "--search-seed", "3",
                "--seed-baselines" if self.seed_baselines else "--no-seed-baselines", "--asha-min-trials", "2",
                "--stop-fraction", "0.5", "--promote", "1", "--bands", str(self.bands),
                "--cpus-per-trial", str(self.cpus), *(["--mlflow-uri", self.mlflow_uri] if self.mlflow_uri else []),
                *self.extra, *(["--resume"] if resume else [])]

    def start(self, resume: bool = False, fault: str | None = None, env: dict | None = None) -> subprocess.Popen:
        """Start the search (or its resume) as a process group of its own; ``fault`` arms a point
        (search/faults.py: ``POINT[@N][:ERRNO]``)."""
        self.out.mkdir(parents=True, exist_ok=True)
        environ = {**os.environ, **self.env, **(env or {}), "M2MDC_FAULT_LOG": str(self.fault_log)}
        environ.pop("M2MDC_FAULT", None)
        if fault:
            environ["M2MDC_FAULT"] = fault
        log = self.log_file.open("a")
        log.write(f"\n=== {'resume' if resume else 'start'} fault={fault} {time.strftime('%H:%M:%S')}\n")
        log.flush()
        return subprocess.Popen(self.command(resume), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env=environ, start_new_session=True)

    @property
    def log_file(self) -> Path:
        return (self.logs or self.out) / f"{self.name}.log"

    @property
    def fault_log(self) -> Path:
        return (self.logs or self.out) / f"{self.name}.faults"

    def hits(self) -> list[str]:
        """The fault points a kill went through, in order (the point writes its line before it kills)."""
        return [line.split()[0] for line in self.fault_log.read_text().splitlines()] if self.fault_log.exists() else []

    def run(self, resume: bool = False, fault: str | None = None, timeout: float = 600, env: dict | None = None) -> int:
        """Run to its end; the exit code (-9: killed at its fault point)."""
        proc = self.start(resume, fault, env=env)
        try:
            return proc.wait(timeout=timeout)
        finally:
            kill_group(proc)

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def optuna_states(self) -> list[str]:
        """The study's trial states, read-only (never writes the store of a running search)."""
        db = self.exp_dir / "optuna.db"
        if not db.exists():
            return []
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                return [s for (s,) in con.execute("SELECT state FROM trials ORDER BY number")]
        except sqlite3.OperationalError:  # being created
            return []

    def outcome(self) -> dict:
        """Per trial number: its configuration and state in the study (what an uninterrupted run must match)."""
        import optuna

        study = optuna.load_study(study_name=self.name, storage=f"sqlite:///{self.exp_dir / 'optuna.db'}")
        return {t.number: (json.dumps(t.params, sort_keys=True), t.state.name) for t in study.trials}

    def rungs(self) -> dict:
        path = self.exp_dir / "asha-rungs.json"
        return json.loads(path.read_text())["rungs"] if path.exists() else {}

    def audit(self, ended: bool = True) -> list[str]:
        """The stores' disagreements (search/audit.py); ``ended=False`` after a kill, before the resume."""
        from search.audit import audit
        from search.mlflow_store import open_client

        uri = self.mlflow_uri or f"sqlite:///{self.out / 'mlflow.db'}"
        return audit(self.exp_dir, open_client(uri), self.name, self.num_samples, ended=ended)

    def audit_partial(self) -> list[str]:
        return self.audit(ended=False) if (self.exp_dir / "optuna.db").exists() else []


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (the search, Ray's daemons and workers); no-op once gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def resume_until_done(search: Search, attempts: int = 3, timeout: float = 600) -> list[int]:
    """``--resume`` until it exits 0 (a resume may itself be killed); the exit codes it gave."""
    codes = []
    for _ in range(attempts):
        codes.append(search.run(resume=True, timeout=timeout))
        if codes[-1] == 0:
            break
    return codes


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a SQLite store in ``folder``, as its own process group (MLflow
    3 starts a job runner with worker processes beside it: stopping the group stops them all)."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = Path(folder), port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 120) -> "MlflowServer":
        import requests

        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "server.log").open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                                      str(self.port), "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                                      "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            try:
                if requests.get(self.uri + "/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server did not answer on {self.uri}")

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
