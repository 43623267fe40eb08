"""Joining a Ray cluster from an entry point (the main job, evaluation, benchmarks), and where the actors' output
goes."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

import ray

WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
LOG_DIR, LOG_NAME = "MEDR3_LOG_DIR", "MEDR3_LOG_NAME"  # env vars read by `log_to_run_folder`


def init_ray(log_dir: str | Path | None = None, verbose: bool = False) -> None:
    """Join the cluster this job was submitted to (RAY_ADDRESS), or start a local one.

    With `log_dir` (and not `verbose`), each of the job's actors writes its output — vLLM's and DeepSpeed's logs,
    warnings, a crash's traceback — to `<log_dir>/<name>.log` (`log_to_run_folder`) instead of streaming it to the
    driver's console. On a multi-node cluster each node writes to that path on its own disk (a shared volume
    gathers them). A local cluster gets more logical CPUs than cores (at least 4) so the fractional actors of the
    CPU default fit.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 token auth; loopback-only local clusters
    env_vars, quiet = dict(WORKER_ENV), bool(log_dir) and not verbose
    runtime_env = {"env_vars": env_vars}
    if quiet:
        env_vars[LOG_DIR] = str(Path(log_dir).resolve())
        runtime_env["worker_process_setup_hook"] = f"{__name__}.log_to_run_folder"
    kwargs = dict(runtime_env=runtime_env, log_to_driver=not quiet)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, **kwargs)


def log_to_run_folder() -> None:
    """Ray's `worker_process_setup_hook` of a job started with a log folder: a worker whose actor carries a log name
    (`actor_env`) points its stdout and stderr (file descriptors 1 and 2, so C++ output and library loggers that hold
    their own handlers go too) at `<log folder>/<name>.log`, appending: a restarted actor continues its file. Other
    workers keep Ray's own log files."""
    folder, name = os.environ.get(LOG_DIR), os.environ.get(LOG_NAME)
    if not (folder and name):
        return
    import sys

    Path(folder).mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(Path(folder) / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def actor_env(log_name: str, threads: int | None = None) -> dict:
    """An actor's runtime environment: the name of its log file (`log_to_run_folder`) and, for a compute actor
    (generator, learner: `threads` set), its OpenMP thread count and, where installed, tcmalloc preloaded.

    glibc malloc hands every large tensor (the learner's vocabulary-wide logits are hundreds of MB) back to the kernel
    on free and faults it in again on the next step: measured here, 23 % of the learner's CPU time went to the kernel
    and tcmalloc made a step 1.3× faster (docs/architecture.md, "CPU numerics"). Debian/Ubuntu:
    `apt-get install libtcmalloc-minimal4` (setup.sh does it when run as root). MEDR3_MALLOC=system turns it off.
    """
    env = {LOG_NAME: log_name}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        tcmalloc = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
        if tcmalloc and os.environ.get("MEDR3_MALLOC") != "system":
            env["LD_PRELOAD"] = tcmalloc
    return {"env_vars": env}
