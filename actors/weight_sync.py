"""Weights flow learner rank 0 → every GeneratorWorker after each update, version-stamped (docs/architecture.md).

- `object_store` (default; CPU and GPU): rank 0 gathers the full state dict and puts it in Ray's object store once;
  each generator reads it (one put, N reads) and reloads it in place.
- `nccl` (GPU): rank 0 and every vLLM worker share one NCCL group (as OpenRLHF does); rank 0 broadcasts each tensor
  once and the engines reload from the received tensors. A generator that died is brought back through the object
  store (the group cannot take a restarted member).
"""

from __future__ import annotations

import logging

import ray

from actors.generator import WORKER_GONE, GeneratorPool
from actors.learner import LearnerGroup
from medr3.config import Config

log = logging.getLogger(__name__)


class ObjectStoreSync:
    def __init__(self, learner: LearnerGroup, generators: GeneratorPool):
        self.learner, self.generators = learner, generators

    def __call__(self, version: int) -> None:
        self.generators.update_weights(self.learner.weights(), version)


class NcclSync:
    def __init__(self, learner: LearnerGroup, generators: GeneratorPool, tensor_parallel_size: int):
        self.learner, self.generators = learner, generators
        rank0 = learner.ranks[0]
        host, port = ray.get(rank0.address.remote())
        world = 1 + len(generators.actors) * tensor_parallel_size
        # Every member must be joining at once: the group forms only when all world_size ranks have arrived.
        joins = [rank0.join_weight_group.remote(host, port, world)]
        joins += [
            a.join_weight_group.remote(host, port, 1 + i * tensor_parallel_size, world)
            for i, a in enumerate(generators.actors)
        ]
        ray.get(joins)

    def __call__(self, version: int) -> None:
        specs = [s for s in ray.get([r.prepare_broadcast.remote() for r in self.learner.ranks]) if s][0]
        receives = [a.receive_weights.remote(specs, version) for a in self.generators.actors]
        ray.get(self.learner.ranks[0].broadcast_prepared.remote())
        self.generators.version = version
        for i, ref in enumerate(receives):
            try:
                ray.get(ref)
            except WORKER_GONE:
                log.warning("generator %d died during an NCCL weight sync; re-syncing it through the object store", i)
                self.generators.weights_ref = self.learner.weights()
                self.generators.recover(i)


def make_weight_sync(config: Config, learner: LearnerGroup, generators: GeneratorPool):
    mode = config.learner.weight_sync
    if mode == "auto":
        mode = "nccl" if config.learner.num_gpus and config.generator.num_gpus else "object_store"
    if mode == "nccl":
        return NcclSync(learner, generators, config.generator.tensor_parallel_size)
    return ObjectStoreSync(learner, generators)
