"""The learner's numerics on the tiny model: bf16 against fp32, the sampling temperature, the first update's ratio,
supervised warm-start steps, and checkpoints written in the background."""

import os
import signal

import pytest
import ray
import torch

from actors.learner import LearnerGroup
from medr3.checkpoint import CheckpointDir
from medr3.packing import TrainSample
from medr3.rollout import GenRequest

from .test_learner import fixed_batch, prompt_ids


def group(tiny_config, replicas=1, **overrides):
    cfg = tiny_config.model_copy(deep=True)
    cfg.learner.replicas, cfg.learner.num_cpus = replicas, 0.5
    cfg.grpo.lr = 1e-3
    for key, value in overrides.items():
        section, field = key.split("__")
        setattr(getattr(cfg, section), field, value)
    return LearnerGroup(cfg)


def test_bf16_loss_and_gradient_are_close_to_fp32(ray_cluster, tiny_config, tiny_tokenizer):
    batch = fixed_batch(tiny_tokenizer, 5)
    results = {}
    for precision in ("fp32", "bf16"):
        learner = group(tiny_config, learner__precision=precision, learner__old_logprobs="generator")
        assert learner.precision == precision
        results[precision] = learner.train(batch)
        learner.shutdown()
    fp32, bf16 = results["fp32"], results["bf16"]
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05, abs=0.02)
    assert bf16["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=0.05)


def test_first_update_with_recompute_has_ratio_exactly_one(ray_cluster, tiny_config, tiny_tokenizer):
    learner = group(tiny_config, learner__precision="bf16", learner__old_logprobs="recompute")
    batch = [
        TrainSample(s.input_ids, s.prompt_len, s.loss_mask, [-2.0] * 12, s.advantage)
        for s in fixed_batch(tiny_tokenizer, 6)
    ]
    metrics = learner.train(batch)  # "generator" logprobs of -2 are far from the tiny model's ~-8.3
    assert metrics["approx_kl"] == 0.0 and metrics["clip_frac"] == 0.0
    assert metrics["logprob_gap"] > 5  # the gap to the generator's logprobs is still measured and logged
    learner.shutdown()


def test_learner_logprobs_match_vllm_at_the_sampling_temperature(ray_cluster, tiny_config, tiny_pool, tiny_tokenizer):
    """Samples drawn at T=0.5: the learner must score them at T=0.5 too, as vLLM's processed logprobs do."""
    gaps = {}
    for learner_temperature in (0.5, 1.0):
        learner = group(
            tiny_config,
            learner__precision="fp32",
            learner__old_logprobs="generator",
            grpo__temperature=learner_temperature,
            grpo__lr=1e-9,
        )
        tiny_pool.update_weights(learner.weights(), tiny_pool.version + 1)
        prompts = prompt_ids(tiny_tokenizer)
        outs = tiny_pool.generate([GenRequest(p, 12, (), seed=i) for i, p in enumerate(prompts)], temperature=0.5)
        samples = [
            TrainSample(p + o.token_ids, len(p), [1] * len(o.token_ids), o.logprobs, 1.0)
            for p, o in zip(prompts, outs)
        ]
        gaps[learner_temperature] = learner.train(samples)["logprob_gap"]
        learner.shutdown()
    assert gaps[0.5] < 2e-3, gaps
    assert gaps[1.0] > 10 * gaps[0.5], gaps


def test_sft_lowers_the_loss_on_its_demonstrations(ray_cluster, tiny_config, tiny_tokenizer):
    learner = group(tiny_config, learner__precision="bf16")
    batch = [
        TrainSample(s.input_ids, s.prompt_len, s.loss_mask, s.old_logprobs, 1.0) for s in fixed_batch(tiny_tokenizer)
    ]
    losses = [learner.train_sft(batch, batch_size=16, lr=3e-3)["loss"] for _ in range(6)]
    assert losses[-1] < 0.8 * losses[0], losses
    learner.shutdown()


def test_killed_background_checkpoint_write_leaves_the_previous_checkpoint_valid(
    ray_cluster, tiny_config, tiny_tokenizer, tmp_path
):
    learner = group(tiny_config)
    learner.train(fixed_batch(tiny_tokenizer, 1))
    ckpts = CheckpointDir(tmp_path)
    first = ckpts.begin()
    learner.save(str(first / "ds"), export_hf=str(first / "hf"))
    assert learner.save_done(wait=True)
    ckpts.commit(first, step=1, meta={"stage": "reasoning"})
    saved = ray.get(learner.weights())

    learner.train(fixed_batch(tiny_tokenizer, 2))
    second = ckpts.begin()
    learner.save(str(second / "ds"), export_hf=str(second / "hf"))  # returns once the state is copied
    pid = ray.get(learner.ranks[0].__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)  # mid-write: the second checkpoint was never committed
    learner.shutdown()

    path, meta = ckpts.latest()
    assert path.name == "step-000001" and meta["stage"] == "reasoning"
    fresh = group(tiny_config)
    fresh.load(str(path / "ds"))
    restored = ray.get(fresh.weights())
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    fresh.shutdown()
