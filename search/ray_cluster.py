"""Start a private local Ray instance, or join the cluster the user names: nothing in between.

``ray.init()`` without an address joins whatever cluster the ``ray_current_cluster`` file in
Ray's temp directory names, even a dead one, and a local Ray's servers listen on every
interface. A search that was not told to join a cluster therefore starts its own instance with
``address="local"`` and Ray's single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``:
node IP 127.0.0.1, so GCS, raylet, object manager and workers bind to loopback only; checked
with ``ss -ltnp`` on Ray 2.60). Ray's own ``RAY_ADDRESS`` counts as ``--address``, as Ray users
expect. Joining ``HOST:PORT`` enables token authentication when a token is available (Ray does
that by itself only for ``auto``), so a cluster started with Ray's default token auth can be
joined by address.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
from contextlib import contextmanager, nullcontext

from m2mdc.errors import UserError

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOKEN_HINT = ("if the cluster uses token authentication (Ray's default), give this driver the cluster's token: "
              "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token copied from the head node "
              "(`ray get-auth-token` prints it there)")


def requested_address(flag: str | None) -> str | None:
    """--address, else Ray's own RAY_ADDRESS, else None (start a private local instance)."""
    return flag or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str | None) -> None:
    """One clear line, before anything is written, when a HOST:PORT address does not answer."""
    if not address or address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError):
        raise UserError(f"Ray cluster {address} is unreachable; start it (ray start --head) or drop "
                        f"--address / RAY_ADDRESS") from None


def prepare_local_only() -> None:
    """Put this process (and the Ray processes it starts, which inherit the environment) into Ray's
    single-machine mode. Must run before Ray computes its node IP; the module constant is patched
    too in case Ray was imported already."""
    os.environ[LOCAL_ONLY_ENV] = "0"
    # imported after the variable is set, on purpose: a Ray imported here for the first time reads it (and
    # ray costs ~0.3 s to import, python -X importtime)
    import ray._private.ray_constants as rc

    rc.ENABLE_RAY_CLUSTER = False


@contextmanager
def _stderr_held():
    """Hold back what is written to fd 2 (Ray's C++ core logs every failed connection attempt there)
    and release it only if the block succeeds: a failure is then reported as one line. Used only
    for joining, where no Ray process is started that could inherit the descriptor."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def start_or_join(address: str | None, num_cpus: int, num_gpus: int | None, dashboard: bool) -> str:
    """``ray.init`` as described in the module docstring; returns a line saying what it did."""
    if address is None:
        prepare_local_only()
    import ray  # after prepare_local_only(), on purpose: see there

    common = dict(include_dashboard=dashboard, dashboard_host="127.0.0.1", logging_level="ERROR",
                  ignore_reinit_error=True, configure_logging=True)
    try:
        with nullcontext() if address is None else _stderr_held():
            return _init(ray, address, num_cpus, num_gpus, common)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, AuthenticationError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if address is None:
            raise UserError(f"cannot start a local Ray instance ({first})") from None
        raise UserError(f"cannot join the Ray cluster at {address} ({first}); {TOKEN_HINT}") from None


def _init(ray, address: str | None, num_cpus: int, num_gpus: int | None, common: dict) -> str:
    if address is None:
        ctx = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **common)
        return (f"[ray] started a private local instance on 127.0.0.1 ({num_cpus} CPUs"
                f"{f', {num_gpus} GPUs' if num_gpus else ''}; session {ctx.address_info.get('session_dir')}); "
                f"pass --address to join a cluster")
    if address != "auto" and not address.startswith("ray://"):
        # Ray's private module, imported only when joining HOST:PORT (after prepare_local_only's order, see there)
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ray.init(address=address, **common)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
    return f"[ray] joined the cluster at {address}: {len(nodes)} node(s), {cpus:g} CPUs"
