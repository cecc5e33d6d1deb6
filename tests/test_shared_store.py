"""Many processes, one tracking store; and the environment failing under a search.

* Two searches started at the same moment on one new SQLite store both finish (issue 39, reproduction 2:
  both died in MLflow's schema migration and left the store half-migrated); a review runs beside a search;
  afterwards the store passes SQLite's integrity check and every search's stores agree (search/audit.py).
  The same pair of searches against ``mlflow server``.
* A full disk, a read-only output folder, a tracking server that goes away: one line, exit 2, nothing
  half-written, and ``--resume`` finishes once the environment is mended.
Helpers: tests/crash.py.
"""
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from tests.crash import REPO, MlflowServer, Search, kill_group, resume_until_done

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(search_out):
    return search_out()


def pair(out, *names, **kw):
    return [Search(out, name, num_samples=2, cpus=1, extra=["--no-asha"], **kw) for name in names]


def run_together(searches) -> list[int]:
    procs = [s.start() for s in searches]  # the same moment
    try:
        return [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            kill_group(p)


def one_line_and_resumable(search: Search, code: int, *words: str) -> str:
    """The search stopped with exit 2 and one line naming what failed and that --resume continues."""
    log = search.log()
    last = log.rstrip().splitlines()[-1]
    assert code == 2, log[-3000:]
    assert "Traceback" not in log.split("=== ")[-1], log[-3000:]
    assert "error:" in last and ("--resume" in last or "same command" in last), last  # says how to go on
    assert all(w in last for w in words), last
    return last


def test_two_searches_started_together_on_a_new_store_both_finish(out):
    first, second = pair(out, "first", "second")
    assert not (out / "mlflow.db").exists()
    assert run_together([first, second]) == [0, 0], first.log()[-2000:] + second.log()[-2000:]
    assert first.audit() == [] and second.audit() == []
    with sqlite3.connect(out / "mlflow.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_review_beside_a_running_search_finishes_and_the_store_recounts(out):
    """analysis/review.py (which writes its plots to the parent run) while a search writes its trials."""
    third, = pair(out, "third")
    proc = third.start()
    try:
        while "RUNNING" not in third.optuna_states():
            assert proc.poll() is None, third.log()[-3000:]
            time.sleep(0.2)
        review = subprocess.run([sys.executable, "analysis/review.py", "--experiment", "first", "--compare", "second",
                                 "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert review.returncode == 0, review.stderr[-3000:]
        assert proc.wait(timeout=900) == 0, third.log()[-3000:]
    finally:
        kill_group(proc)
    for s in pair(out, "first", "second", "third"):  # a fresh process opens the store and recounts
        assert s.audit() == [], s.name


def test_two_searches_started_together_against_mlflow_server(out, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        searches = pair(out, "served-a", "served-b", mlflow_uri=server.uri)
        assert run_together(searches) == [0, 0], searches[0].log()[-2000:] + searches[1].log()[-2000:]
        assert [s.audit() for s in searches] == [[], []]
    finally:
        server.stop()


# ---- the environment failing -------------------------------------------------------------------------

@contextmanager
def own_mount(folder, *how):
    """``folder`` mounted as ``how`` says (``mount`` arguments), unmounted after; skipped where this user
    may not mount (then the fault-point tests below cover the same paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", *how, str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount here ({mounted.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def break_after_first_trial(search: Search, breaks, mends, *words: str) -> None:
    """Start ``search``, call ``breaks()`` once its first trial is COMPLETE in the study; it must stop with
    one line naming what failed; ``mends()``; then --resume finishes and the stores agree."""
    proc = search.start()
    try:
        while search.optuna_states().count("COMPLETE") < 1:
            assert proc.poll() is None, search.log()[-3000:]
            time.sleep(0.2)
        breaks()
        code = proc.wait(timeout=600)
    finally:
        kill_group(proc)
    mends()
    one_line_and_resumable(search, code, *words)
    assert search.audit(ended=False) == []
    assert resume_until_done(search) == [0], search.log()[-3000:]
    assert search.audit() == []


def test_a_disk_that_fills_up_stops_the_search_with_one_line_and_resume_finishes(tmp_path, smoke_teacher):
    """A real full disk: the output root on a 400 MB tmpfs, filled to the last byte mid-search."""
    out = tmp_path / "small-disk"
    with own_mount(out, "-t", "tmpfs", "-o", "size=400m", "tmpfs"):
        shutil.copytree(smoke_teacher, out / "teachers")
        filler = out / "filler"
        search = Search(out, "disk-full", num_samples=3, extra=["--no-asha"], logs=tmp_path)
        break_after_first_trial(search, lambda: subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"],
                                                               capture_output=True),
                                filler.unlink, "disk is full")


def test_an_output_folder_turned_read_only_refuses_with_one_line_and_resume_finishes(tmp_path, smoke_teacher):
    """A real read-only file system: the output root bind-mounted onto itself. The search is killed after its
    first trial, the folder is remounted read-only (Linux refuses that while a process still writes there),
    and --resume stops with one line, writing nothing; writable again, --resume finishes. A new search on
    the read-only folder is refused the same way."""
    out = tmp_path / "turns-read-only"
    with own_mount(out, "--bind", str(out)):
        shutil.copytree(smoke_teacher, out / "teachers")
        search = Search(out, "read-only", num_samples=3, extra=["--no-asha"], logs=tmp_path)
        assert search.run(fault="mlflow.closed@1") == -9
        remount(out, "ro")
        before = snapshot(out)
        line = one_line_and_resumable(search, search.run(resume=True), "not writable", "Read-only file system")
        assert "run the same command again" in line
        fresh = Search(out, "new-on-read-only", logs=tmp_path)
        assert fresh.run() == 2 and "not writable" in fresh.log().splitlines()[-1]
        assert snapshot(out) == before  # nothing written, half or whole
        remount(out, "rw")
        assert resume_until_done(search) == [0], search.log()[-3000:]
        assert search.audit() == []


def remount(folder, mode: str, timeout: float = 30) -> None:
    """Remount a bind mount ``ro`` or ``rw``; Linux refuses ``ro`` while a (dying) process holds a file open
    for writing there, so it is retried for a while."""
    deadline = time.time() + timeout
    while True:
        r = subprocess.run(["mount", "-o", f"remount,{mode},bind", str(folder)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        assert time.time() < deadline, r.stderr
        time.sleep(0.5)


def snapshot(folder) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_injected_enospc_in_a_trial_and_in_the_driver_stops_with_one_line(out):
    """The same, at known places: ENOSPC raised as a trial writes its final record (in the trial's
    worker), then, on resume, at the driver's MLflow write of a final result."""
    search = Search(out, "enospc", num_samples=3, extra=["--no-asha"])
    line = one_line_and_resumable(search, search.run(fault="trial.final_saved@1:ENOSPC"), "disk is full")
    assert "final.json" in line and "in trial" in line  # names the file and the trial
    assert search.audit(ended=False) == []
    one_line_and_resumable(search, search.run(resume=True, fault="mlflow.final_logged@1:ENOSPC"), "disk is full")
    assert resume_until_done(search) == [0], search.log()[-3000:]
    assert search.audit() == []


def test_the_read_only_fault_point_stops_the_search_with_one_line(out):
    search = Search(out, "erofs", num_samples=2, extra=["--no-asha"])
    one_line_and_resumable(search, search.run(fault="trial.final_saved@1:EROFS"), "read-only")
    assert resume_until_done(search) == [0] and search.audit() == []


def test_a_tracking_server_that_goes_away_stops_the_search_with_one_line_and_resume_finishes(out, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    search = Search(out, "server-gone", num_samples=3, extra=["--no-asha"], mlflow_uri=server.uri)
    try:  # restarted on the same store and address
        break_after_first_trial(search, server.stop, server.start, "tracking server", server.uri)
    finally:
        server.stop()
