"""Ray, as both of rcr-deploy's uses of it start it: `serve` (app.py) and `infer --ray`
(batch.py). The model is checked once in this process before Ray starts, so a bad path or a wrong
artifact is one line at once rather than a failure inside a worker; Ray is started locally (or
joined) with its usage statistics off.

Ray 2.60 resolves a node address of 127.0.0.1 to the machine's own address (`ray.init` and
`ray start` alike), so a local Ray's own services still listen beyond loopback; docs/serving.md
says what to firewall.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from rcr_deploy.errors import RcrError


def check_model(model: str | os.PathLike | None, backend: str = "auto", device: str = "cpu", size: int | None = None) -> str | None:
    """Load the model here with infer's checks of the artifact and `size`, convert it once (a
    checkpoint for OpenVINO), and return it as the workers load it: an absolute path, since they
    may run in another folder or on another node (None: the built-in model)."""
    from rcr_deploy.infer import Segmenter
    from rcr_deploy.runtime import load_runner

    model_arg = None if model is None else str(Path(model).resolve())
    with load_runner(model_arg, device=device, backend=backend) as runner:
        Segmenter(runner, size=size)  # so serve and infer --ray accept the models infer and eval do
        runner.prepare()  # a first conversion happens once, here, not in every worker
    return model_arg


def start_ray(address: str | None = None) -> bool:
    """Start a local Ray (or join the cluster at `address`: HOST:PORT, 'auto' or ray://...)
    unless this process is already connected; True when this call connected, so the caller
    shuts it down again."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from rcr-deploy's Ray
    import ray

    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        ray.init(include_dashboard=False, **quiet)
        return True
    _reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:  # what ray.init raises for an address it cannot use
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RcrError(f"--ray-address {address}: cannot join that Ray cluster ({reason}); check the address, or leave it out to start Ray here") from e
    return True


def threads_per_worker(threads: int | None, workers: int) -> int:
    """`--threads`, or by default this machine's cores shared out among the workers (replicas)."""
    return threads or max(1, (os.cpu_count() or 1) // workers)


def _reachable(address: str) -> None:
    """Refuse a HOST:PORT where nothing listens, in seconds: `ray.init` retries such an address
    for many minutes without a word."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return  # 'auto' reads the local cluster's address; Ray Client (ray://) has its own timeout
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as e:
        raise RcrError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); pass the head node's GCS address (HOST:6379), or leave it out to start Ray here") from e
