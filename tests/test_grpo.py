"""GRPO math against hand-computed values; packing; masking keeps inserted tokens out of the gradient."""

import math

import pytest
import torch

from medr3.checkpoint import CheckpointDir
from medr3.grpo import LossSettings, compute_advantages, kl_k3, policy_loss_terms
from medr3.packing import TrainSample, collate, pack


def test_grpo_advantage_is_group_zscore():
    adv = compute_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]), "grpo", 1e-6)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased, 0.5774
    assert adv[0].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rel=1e-5)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # all equal: no signal, no NaN


def test_tied_groups_are_found_and_can_be_left_out_of_the_learner_batch():
    from types import SimpleNamespace

    from medr3.experience import train_samples, uniform_groups

    totals = [0.5, 0.5, 0.5, 0.5, 1.0, 0.0, 0.0, 0.0, 0.2, 0.2 + 1e-9, 0.2, 0.2]
    assert uniform_groups(totals, 4) == [True, False, True]  # float noise does not untie a group
    trajs = [
        SimpleNamespace(prompt_ids=[1], response_ids=[i], loss_mask=[1], logprobs=[-1.0], generated_tokens=1)
        for i in range(12)
    ]
    advs = [0.0] * 4 + [1.5, -0.5, -0.5, -0.5] + [0.0] * 4
    kept = train_samples(trajs, advs, 4, skip=uniform_groups(totals, 4))
    assert [s.advantage for s in kept] == [1.5, -0.5, -0.5, -0.5]
    assert len(train_samples(trajs, advs, 4)) == 12  # without `skip` every group trains


def test_other_estimators_by_name():
    r = torch.tensor([[3.0, 1.0, 2.0]])
    assert compute_advantages(r, "drgrpo").tolist() == [[1.0, -1.0, 0.0]]
    assert compute_advantages(r, "rloo")[0].tolist() == pytest.approx([1.5, -1.5, 0.0])  # 3 - mean(1,2) = 1.5
    pp = compute_advantages(torch.tensor([[1.0, 0.0], [5.0, 3.0]]), "reinforce_pp")
    assert pp.mean().item() == pytest.approx(0.0, abs=1e-6) and pp.std().item() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(KeyError, match="unknown advantage estimator"):
        compute_advantages(r, "ppo")


def loss_of(ratio, adv, s=LossSettings()):
    lp = torch.tensor([[math.log(ratio)]])
    total, _ = policy_loss_terms(lp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), s)
    return total.item()


@pytest.mark.parametrize(
    "ratio, adv, expected",
    [
        (1.0, 1.0, -1.0),
        (1.5, 1.0, -1.2),  # positive advantage: clipped at 1 + 0.2
        (0.5, 1.0, -0.5),  # below the clip the unclipped (smaller) objective is kept
        (0.5, -1.0, 0.8),  # negative advantage: clipped at 1 - 0.2
        (2.0, -1.0, 2.0),  # ratio 2 < dual clip 3: plain PPO
        (10.0, -1.0, 3.0),  # dual clip bounds the loss at c * |A|
    ],
)
def test_clipped_loss_by_hand(ratio, adv, expected):
    assert loss_of(ratio, adv) == pytest.approx(expected, rel=1e-5)


def test_clip_higher_widens_only_the_upper_bound():
    s = LossSettings(clip_low=0.2, clip_high=0.28)
    assert loss_of(1.5, 1.0, s) == pytest.approx(-1.28, rel=1e-5)
    assert loss_of(0.5, -1.0, s) == pytest.approx(0.8, rel=1e-5)


def test_masked_tokens_receive_zero_gradient():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0]], dtype=torch.float)
    # ratio 1 on trained tokens; garbage where masked must not leak in (exp(1e4) would overflow)
    old = lp.detach().where(mask.bool(), torch.full_like(lp, 1e4))
    total, _ = policy_loss_terms(lp, old, torch.tensor([1.0, -2.0]), mask, LossSettings())
    total.backward()
    grad_per_token = logits.grad.abs().sum(-1)
    assert torch.all(grad_per_token[mask == 0] == 0) and torch.all(grad_per_token[mask == 1] > 0)


def test_kl_k3_is_zero_on_equal_policies_and_positive_elsewhere():
    lp = torch.log(torch.tensor([[0.2, 0.5]]))
    assert kl_k3(lp, lp).abs().max().item() == 0.0
    assert (kl_k3(lp, torch.log(torch.tensor([[0.4, 0.1]]))) > 0).all()


def sample(n_prompt, n_resp, adv=1.0, mask=None):
    return TrainSample(list(range(1, n_prompt + n_resp + 1)), n_prompt, mask or [1] * n_resp, [-0.5] * n_resp, adv)


def test_pack_respects_the_budget_and_gives_every_rank_the_same_count():
    samples = [sample(5, n) for n in (3, 30, 7, 12, 20, 1, 9)]
    per_rank = pack(samples, token_budget=64, world_size=2)
    assert len(per_rank[0]) == len(per_rank[1]) >= 1
    micro = [b for rank in per_rank for b in rank]
    assert sorted(id(s) for b in micro for s in b) == sorted(id(s) for s in samples)
    assert all(max(len(s.input_ids) for s in b) * len(b) <= 64 or len(b) == 1 for b in micro)


def test_pack_pads_ranks_with_zero_weight_copies_when_samples_are_few():
    per_rank = pack([sample(3, 4)], token_budget=64, world_size=2)
    dummy = per_rank[1][0][0]
    assert dummy.advantage == 0.0 and dummy.trained_tokens == 0


def test_collate_aligns_response_tokens_with_their_predicting_position():
    s = sample(3, 4, mask=[1, 0, 0, 1])
    t = collate([s, sample(2, 2)])
    # Logits start at position first = 1 (the shorter prompt's last token predicts its first response token).
    assert t["input_ids"].shape == (2, 7) and t["first"] == 1 and t["mask"].shape == (2, 5)
    assert t["mask"][0].tolist() == [0, 1, 0, 0, 1]  # position 2 predicts token 3 (first response token)
    assert t["targets"][0, 1].item() == s.input_ids[3]
    assert t["old_logprobs"][0].tolist() == [0, -0.5, -0.5, -0.5, -0.5]
    assert t["mask"][1].tolist() == [1, 1, 0, 0, 0]  # padding never counts


def test_sample_lengths_must_agree():
    with pytest.raises(ValueError, match="response of 2 tokens"):
        TrainSample([1, 2, 3, 4], 2, [1], [0.0], 1.0)


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path):
    ckpt = CheckpointDir(tmp_path, keep=2)
    tmp = ckpt.begin()
    (tmp / "weights").write_text("v1")
    ckpt.commit(tmp, step=1, meta={"stage": "reasoning"})
    crashed = ckpt.begin()
    (crashed / "weights").write_text("half")  # the process dies here: no commit
    path, meta = ckpt.latest()
    assert meta["step"] == 1 and meta["stage"] == "reasoning" and (path / "weights").read_text() == "v1"
    for step in (2, 3, 4):
        ckpt.commit(ckpt.begin(), step=step, meta={})
    assert [p.name for p in ckpt.all()] == ["step-000003", "step-000004"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_restarted_run_is_newer_than_old_higher_steps_and_prunes_them_first(tmp_path):
    ckpt = CheckpointDir(tmp_path, keep=2)
    for step in (8, 9):
        ckpt.commit(ckpt.begin(), step=step, meta={})
    newest = ckpt.commit(ckpt.begin(), step=1, meta={})  # e.g. a run that restarted without --fresh's set-aside
    assert ckpt.latest()[0] == newest
    assert [p.name for p in ckpt.all()] == ["step-000009", "step-000001"]


def test_fresh_sets_old_checkpoints_aside_so_the_new_run_keeps_its_own(tmp_path):
    old = CheckpointDir(tmp_path / "checkpoints", keep=2)
    old.commit(old.begin(), step=9, meta={})
    moved = old.set_aside()
    assert moved is not None and (moved / "step-000009").is_dir()
    fresh = CheckpointDir(tmp_path / "checkpoints", keep=2)
    assert fresh.latest() is None
    first = fresh.commit(fresh.begin(), step=1, meta={})
    assert first.is_dir() and fresh.latest()[0] == first
    assert fresh.set_aside() != moved and CheckpointDir(tmp_path / "checkpoints").set_aside() is None


def test_a_huge_log_ratio_is_clamped_instead_of_overflowing():
    logprobs = torch.tensor([[0.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-500.0, -1.0]])  # a stale or garbage old logprob: exp(500) is inf in float32
    loss, stats = policy_loss_terms(logprobs, old, torch.tensor([-1.0]), torch.ones(1, 2), LossSettings())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(stats["approx_kl"]) and torch.isfinite(logprobs.grad).all()
