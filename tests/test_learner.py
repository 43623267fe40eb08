"""The DeepSpeed GRPO learner through Ray on the tiny model: sync, checkpoints, ZeRO stages, and that it learns."""

import random

import pytest
import ray
import torch

from actors.learner import LearnerGroup
from medr3.checkpoint import CheckpointDir
from medr3.grpo import compute_advantages
from medr3.packing import TrainSample
from medr3.rollout import GenRequest

from .test_generator import hf_greedy

PROMPTS = [
    "<|im_start|>user\nWhat prevents scurvy?<|im_end|>\n<|im_start|>assistant\n<think>",
    "<|im_start|>user\nName a cause of anemia.<|im_end|>\n<|im_start|>assistant\n<think>",
    "<|im_start|>user\nWhich organ makes insulin?<|im_end|>\n<|im_start|>assistant\n<think>",
    "<|im_start|>user\nHow is malaria spread?<|im_end|>\n<|im_start|>assistant\n<think>",
]


def learner_config(tiny_config, **grpo):
    cfg = tiny_config.model_copy(deep=True)
    cfg.learner.replicas, cfg.learner.num_cpus, cfg.learner.zero_stage = 2, 0.5, grpo.pop("zero_stage", 2)
    for key, value in {"lr": 5e-3, "samples_per_prompt": 8, **grpo}.items():
        setattr(cfg.grpo, key, value)
    return cfg


@pytest.fixture(scope="module")
def learner(ray_cluster, tiny_config, tiny_pool):
    group = LearnerGroup(learner_config(tiny_config))
    tiny_pool.update_weights(group.weights(), tiny_pool.version + 1)  # start both sides from the same weights
    yield group
    group.shutdown()


def prompt_ids(tokenizer):
    return [tokenizer(p).input_ids for p in PROMPTS]


def rollout(pool, tokenizer, step, n=8, max_tokens=16):
    prompts = prompt_ids(tokenizer)
    requests = [GenRequest(p, max_tokens, (), seed=step * 997 + i) for i, p in enumerate(prompts) for _ in range(n)]
    requests = [GenRequest(r.prompt_ids, r.max_tokens, (), seed=r.seed * n + j % n) for j, r in enumerate(requests)]
    return prompts, pool.generate(requests, temperature=1.0)


def grpo_step(pool, learner, tokenizer, step, reward_fn, n=8):
    prompts, outs = rollout(pool, tokenizer, step, n)
    rewards = torch.tensor([reward_fn(o.token_ids) for o in outs]).view(len(prompts), n)
    adv = compute_advantages(rewards, "grpo").flatten().tolist()
    samples = [
        TrainSample(prompts[i // n] + o.token_ids, len(prompts[i // n]), [1] * len(o.token_ids), o.logprobs, adv[i])
        for i, o in enumerate(outs)
    ]
    metrics = learner.train(samples, seed=step)
    pool.update_weights(learner.weights(), pool.version + 1)
    return rewards.mean().item(), metrics


def test_after_sync_generator_greedy_equals_transformers_on_learner_weights(
    learner, tiny_pool, tiny_tokenizer, tiny_model_dir
):
    _, metrics = grpo_step(tiny_pool, learner, tiny_tokenizer, 0, lambda ids: float(len(set(ids))))
    assert metrics["grad_norm"] > 0 and metrics["tokens_per_s"] > 0
    state = ray.get(learner.weights())
    ids = prompt_ids(tiny_tokenizer)[0]
    (out,) = tiny_pool.generate([GenRequest(ids, 20, ())], temperature=0.0)
    assert out.token_ids == hf_greedy(tiny_model_dir, state, ids, len(out.token_ids))


def fixed_batch(tokenizer, seed=0):
    rng = random.Random(seed)
    prompts = prompt_ids(tokenizer)
    out = []
    for i in range(16):
        p = prompts[i % 4]
        resp = [rng.randrange(10, 4000) for _ in range(12)]
        out.append(TrainSample(p + resp, len(p), [1] * 12, [-8.3] * 12, rng.uniform(-1, 1)))
    return out


def test_grad_norm_is_reported_without_zero_as_with_it(ray_cluster, tiny_config, tiny_tokenizer):
    norms = {}
    for stage in (0, 2):  # ZeRO-0 is the CPU default; DeepSpeed kept no norm there and the metric read 0.0
        cfg = learner_config(tiny_config, zero_stage=stage, lr=1e-3)
        cfg.learner.precision = "fp32"
        group = LearnerGroup(cfg)
        norms[stage] = group.train(fixed_batch(tiny_tokenizer, 2))["grad_norm"]
        group.shutdown()
    assert norms[0] > 0 and norms[0] == pytest.approx(norms[2], rel=1e-3), norms


def test_checkpoint_round_trip_restores_weights_and_optimizer_state(learner, tiny_tokenizer, tmp_path):
    learner.train(fixed_batch(tiny_tokenizer, 1))  # give Adam some moments
    ckpts = CheckpointDir(tmp_path)
    tmp = ckpts.begin()
    learner.save(str(tmp / "ds"), export_hf=str(tmp / "hf"))
    assert learner.save_done(wait=True)
    path = ckpts.commit(tmp, step=1, meta={})
    assert all((path / f"ds/rng_rank{r}.pt").is_file() for r in range(learner.world_size))  # every rank's RNG
    saved = ray.get(learner.weights())
    learner.train(fixed_batch(tiny_tokenizer, 2))
    continued = ray.get(learner.weights())
    learner.load(str(path / "ds"))
    restored = ray.get(learner.weights())
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    learner.train(fixed_batch(tiny_tokenizer, 2))  # the same step again: identical only if Adam's state came back
    again = ray.get(learner.weights())
    assert all(torch.allclose(continued[k], again[k], atol=1e-7) for k in continued)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(path / "hf").state_dict()
    assert torch.equal(exported["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])


TARGET = set(range(100, 600))  # 500 of 4104 ids: ~12% of uniformly sampled tokens


def share_of_target(ids):
    return sum(t in TARGET for t in ids) / max(len(ids), 1)


@pytest.mark.slow
def test_learning_proof_reward_rises_on_two_ranks_zero2(learner, tiny_pool, tiny_tokenizer):
    """A dense learnable reward must rise clearly; this fails if the gradient's sign or the masking is wrong."""
    curve = [grpo_step(tiny_pool, learner, tiny_tokenizer, step, share_of_target)[0] for step in range(1, 25)]
    first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
    assert last > first + 0.15, f"reward did not rise: {curve}"


@pytest.mark.slow
def test_zero_stages_give_the_same_loss_trajectory(ray_cluster, tiny_config, tiny_tokenizer):
    trajectories = {}
    for stage in (1, 2, 3):
        cfg = learner_config(tiny_config, zero_stage=stage, lr=1e-3)
        cfg.learner.precision = "fp32"  # exact numerics: the stages must agree to 1e-4, which bf16 rounding would blur
        group = LearnerGroup(cfg)
        trajectories[stage] = [group.train(fixed_batch(tiny_tokenizer, 3))["loss"] for _ in range(3)]
        group.shutdown()
    for stage in (2, 3):
        assert trajectories[stage] == pytest.approx(trajectories[1], rel=1e-4, abs=1e-6), trajectories
    assert trajectories[1][0] != pytest.approx(trajectories[1][2], rel=1e-6)  # the batch was actually trained on
