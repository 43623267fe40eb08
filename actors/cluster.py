"""Joining a Ray cluster from an entry point (the main job, evaluation, benchmarks)."""

from __future__ import annotations

import ctypes.util
import os

import ray

WORKER_ENV = {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}


def init_ray() -> None:
    """Join the cluster this job was submitted to (RAY_ADDRESS), or start a local one.

    A local cluster gets more logical CPUs than cores (at least 4) so the fractional actors of the CPU default fit.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 token auth; loopback-only local clusters
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=WORKER_ENV, log_to_driver=True)
    else:
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, runtime_env=WORKER_ENV)


def cpu_actor_env(threads: int) -> dict:
    """The runtime environment of a compute actor (generator, learner): its OpenMP thread count and, where installed,
    tcmalloc preloaded. glibc malloc hands every large tensor (the learner's vocabulary-wide logits are hundreds of MB)
    back to the kernel on free and faults it in again on the next step: measured here, 23 % of the learner's CPU time
    went to the kernel and tcmalloc made a step 1.3× faster (docs/architecture.md, "CPU numerics"). Debian/Ubuntu:
    `apt-get install libtcmalloc-minimal4` (setup.sh does it when run as root). MEDR3_MALLOC=system turns it off.
    """
    env = {"OMP_NUM_THREADS": str(threads)}
    tcmalloc = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if tcmalloc and os.environ.get("MEDR3_MALLOC") != "system":
        env["LD_PRELOAD"] = tcmalloc
    return {"env_vars": env}
