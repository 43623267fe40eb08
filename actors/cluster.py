"""Joining a Ray cluster from an entry point (the main job, evaluation, benchmarks)."""

from __future__ import annotations

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
