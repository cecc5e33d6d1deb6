"""Real Ray clusters around a search: a two-node cluster started here with `ray start` (Ray's token
authentication on), a plain search beside that live cluster, a stale `ray_current_cluster` file,
and a wrong token. Every Ray process this module starts is stopped through the `ray start --block`
processes that own them; nothing else on the machine is touched (own RAY_TMPDIR, own ports).
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from .searches import BUDGET, LEAN, check_search

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _short_tmp() -> str:
    return tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay under 108 characters


def _alive_nodes(address: str, env: dict) -> int:
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else 0


@pytest.fixture(scope="module")
def out(search_out):
    return search_out()  # one output root, the run's smoke teacher in it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head + one worker node on this machine, 1 CPU each, token authentication on."""
    folder = tmp_path_factory.mktemp("ray-cluster")
    token = folder / "token"
    token.write_text(secrets.token_hex(32))
    ray_tmp = _short_tmp()
    # (Ray's single-machine mode, which the search uses for its own instance, refuses a second node)
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        for args in (["--head", "--port", str(port), "--include-dashboard", "false"], ["--address", address]):
            procs.append(subprocess.Popen([RAY, "start", *args, "--num-cpus", "1", "--block"], env=env,
                                          stdout=(folder / f"node{len(procs)}.log").open("w"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
            deadline = time.time() + 120
            while _alive_nodes(address, env) < len(procs):
                assert time.time() < deadline, (folder / f"node{len(procs) - 1}.log").read_text()[-2000:]
                assert procs[-1].poll() is None, (folder / f"node{len(procs) - 1}.log").read_text()[-2000:]
                time.sleep(2)
        yield SimpleNamespace(address=address, token=token, ray_tmp=ray_tmp)
    finally:
        for p in reversed(procs):  # `ray start --block` stops the Ray processes it started when it ends
            p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for p in procs:  # anything left in their sessions is ours: stop it
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


def frontier(out: Path, name: str, *args, env: dict, timeout=900):
    cmd = [sys.executable, "search/frontier.py", "--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset",
           "digits", "--out-dir", str(out), "--space", str(LEAN), "--no-asha", "--name", name, *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def test_search_on_a_two_node_cluster_with_token_auth(out, cluster):
    """--address HOST:PORT joins a cluster that uses Ray's token authentication (the token given as
    RAY_AUTH_TOKEN_PATH, as a driver on another machine would have it), and trials run on both nodes."""
    r = frontier(out, "cluster", "--address", cluster.address, "--num-samples", "2", "--max-concurrent", "2",
                 "--cpus-per-trial", "1", env=_env(RAY_AUTH_TOKEN_PATH=str(cluster.token)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"[ray] joined the cluster at {cluster.address}: 2 node(s)" in r.stdout
    children, _ = check_search(out, "cluster", 2)
    nodes = {c.data.tags["node"] for c in children if c.data.tags.get("status") == "completed"}
    assert len(nodes) == 2, nodes  # both machines of the cluster ran a trial


def test_plain_search_starts_its_own_instance_beside_a_live_cluster(out, cluster):
    """Ray's temp dir names the live cluster (ray_current_cluster): without --address the search must
    not join it (ray.init() would), but start a private instance on loopback."""
    assert Path(cluster.ray_tmp, "ray", "ray_current_cluster").read_text().strip().endswith(cluster.address.split(":")[1])
    r = frontier(out, "beside", "--num-samples", "1", "--cpus-per-trial", "1", env=_env(RAY_TMPDIR=cluster.ray_tmp))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[ray] started a private local instance on 127.0.0.1" in r.stdout
    check_search(out, "beside", 1)


def test_plain_search_ignores_a_stale_cluster_file(out):
    ray_tmp = _short_tmp()
    try:
        Path(ray_tmp, "ray").mkdir()
        Path(ray_tmp, "ray", "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")  # a dead cluster
        r = frontier(out, "stale", "--num-samples", "1", "--cpus-per-trial", "1", env=_env(RAY_TMPDIR=ray_tmp))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "[ray] started a private local instance on 127.0.0.1" in r.stdout
        check_search(out, "stale", 1)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_wrong_token_is_one_line_and_writes_nothing(cluster, tmp_path):
    fresh = tmp_path / "out"
    r = frontier(fresh, "denied", "--address", cluster.address, env=_env(RAY_AUTH_TOKEN="0" * 64))
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot join the Ray cluster at {cluster.address}" in lines[0], r.stderr
    assert "RAY_AUTH_TOKEN" in lines[0]
    assert not (fresh / "mlflow.db").exists() and not (fresh / "search").exists()
    assert not (fresh / "teachers").exists()  # Ray is joined before any teacher is trained
