"""Training samples and their packing into micro-batches by a token budget, the same count on every rank.

ZeRO's gradient reductions are collectives, so every rank must run the same number of backward passes per optimizer
step; the packer therefore deals each mini-batch into a multiple of `world_size` micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainSample:
    """One trajectory for the learner. `loss_mask` and `old_logprobs` run over the response tokens only."""

    input_ids: list[int]  # prompt + response
    prompt_len: int
    loss_mask: list[int]
    old_logprobs: list[float]
    advantage: float

    def __post_init__(self) -> None:
        response = len(self.input_ids) - self.prompt_len
        if not (len(self.loss_mask) == len(self.old_logprobs) == response):
            raise ValueError(
                f"response of {response} tokens but mask {len(self.loss_mask)} / logprobs {len(self.old_logprobs)}"
            )

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss_mask)


def pack(samples: list[TrainSample], token_budget: int, world_size: int) -> list[list[list[TrainSample]]]:
    """Deal samples into micro-batches of at most `token_budget` padded tokens (a longer sample goes alone), then
    split the biggest until their number is a multiple of `world_size`. Returns micro-batches per rank."""
    if not samples:
        raise ValueError("nothing to pack")
    order = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)
    micro: list[list[TrainSample]] = []
    for s in order:
        for batch in micro:
            width = max(len(s.input_ids), max(len(b.input_ids) for b in batch))
            if width * (len(batch) + 1) <= token_budget:
                batch.append(s)
                break
        else:
            micro.append([s])
    while len(micro) % world_size:
        splittable = [b for b in micro if len(b) > 1]
        if not splittable:
            # Fewer samples than ranks: a rank gets a copy whose advantage is zero (it adds no gradient).
            copy = micro[0][0]
            micro.append(
                [TrainSample(copy.input_ids, copy.prompt_len, [0] * len(copy.loss_mask), copy.old_logprobs, 0.0)]
            )
            continue
        biggest = max(splittable, key=len)
        micro.remove(biggest)
        half = len(biggest) // 2
        micro += [biggest[:half], biggest[half:]]
    return [micro[r::world_size] for r in range(world_size)]


def collate(batch: list[TrainSample], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded tensors aligned for next-token prediction.

    input_ids, attention_mask: (B, L). `first` = the earliest position whose logits predict a response token; the
    learner computes logits from there only (the prompt's logits are never needed). targets, mask, old_logprobs:
    (B, L−1−first), where column c scores token first+c+1; mask is 1 exactly on the response tokens the policy
    generated. advantages: (B,).
    """
    width = max(len(s.input_ids) for s in batch)
    b = len(batch)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width - 1))
    old = torch.zeros((b, width - 1))
    for i, s in enumerate(batch):
        n = len(s.input_ids)
        input_ids[i, :n] = torch.tensor(s.input_ids)
        attention[i, :n] = 1
        start = s.prompt_len - 1  # logits at position prompt_len-1 predict the first response token
        mask[i, start : n - 1] = torch.tensor(s.loss_mask, dtype=torch.float)
        old[i, start : n - 1] = torch.tensor(s.old_logprobs, dtype=torch.float)
    first = min(s.prompt_len for s in batch) - 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "first": first,
        "targets": input_ids[:, 1 + first :],
        "mask": mask[:, first:],
        "old_logprobs": old[:, first:],
        "advantages": torch.tensor([s.advantage for s in batch], dtype=torch.float),
    }
