"""DeepSpeed GRPO learner: `LearnerRank` (plain class, one ZeRO rank), `LearnerActor` (its Ray shell) and
`LearnerGroup` (R ranks in a placement group, driven as one).

Each optimizer step takes a mini-batch dealt into the same number of micro-batches on every rank; the loss is the
token mean over the whole mini-batch (all micro-batches, all ranks), as the release's token-mean aggregation.
"""

from __future__ import annotations

import random
import socket
import time

import numpy as np
import ray
import torch
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors import deepspeed_compat as dsc
from medr3.config import Config
from medr3.grpo import LossSettings, kl_k3, policy_loss_terms, token_logprobs
from medr3.packing import TrainSample, collate, pack


class LearnerRank:
    """One DeepSpeed rank holding the policy (and a frozen reference when the KL coefficient is positive)."""

    def __init__(self, config: Config, rank: int, world_size: int):
        self.config, self.rank, self.world_size = config, rank, world_size
        torch.set_num_threads(config.learner.cpu_threads)
        self.engine = self.reference = None

    def address(self) -> tuple[str, int]:
        """Rank 0's address and a free port for the process group rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> int:
        from transformers import AutoModelForCausalLM

        cfg, lcfg = self.config, self.config.learner
        backend = lcfg.backend if lcfg.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
        dsc.init_distributed(backend, self.rank, self.world_size, master_addr, master_port)
        torch.manual_seed(cfg.run.seed + self.rank)
        bf16 = cfg.model.dtype == "bfloat16"
        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        if lcfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.grpo.lr, weight_decay=cfg.grpo.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant, as the release
        self.engine = dsc.initialize(
            model, optimizer, scheduler, dsc.ds_config(lcfg.zero_stage, bf16, cfg.grpo.grad_clip)
        )
        if cfg.grpo.kl_coef > 0:
            self.reference = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32).eval()
            self.reference.requires_grad_(False)
        self.loss_settings = LossSettings(
            cfg.grpo.clip_low, cfg.grpo.clip_high, cfg.grpo.dual_clip, cfg.grpo.kl_coef, cfg.grpo.entropy_coef
        )
        return sum(p.numel() for p in model.parameters())

    def _device(self) -> torch.device:
        return self.engine.device

    def _forward(self, batch: dict[str, torch.Tensor], model=None) -> torch.Tensor:
        """Logits of the positions from `first` on: (B, L−1−first, V). The vocabulary projection and softmax of the
        prompt positions (most of a sequence, and the costliest part with a large vocabulary) are skipped."""
        model = model or self.engine.module
        hidden = model.get_decoder()(
            input_ids=batch["input_ids"].to(self._device()),
            attention_mask=batch["attention_mask"].to(self._device()),
            use_cache=False,
        ).last_hidden_state
        return model.get_output_embeddings()(hidden[:, batch["first"] : -1])

    @torch.no_grad()
    def _recompute_old(self, micro: list[list[TrainSample]]) -> None:
        for batch in micro:
            t = collate(batch)
            lp = token_logprobs(self._forward(t), t["targets"].to(self._device())).cpu()
            for i, s in enumerate(batch):
                start, end = s.prompt_len - 1 - t["first"], len(s.input_ids) - 1 - t["first"]
                s.old_logprobs = lp[i, start:end].tolist()

    def train(self, mini_batches: list[tuple[list[list[TrainSample]], int]]) -> dict:
        """Run optimizer steps, one per `(micro_batches, total_tokens)` entry; returns averaged metrics."""
        if self.config.learner.old_logprobs == "recompute":
            self._recompute_old([b for micro, _ in mini_batches for b in micro])
        self.engine.train()
        sums = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "entropy": 0.0, "kl_ref": 0.0}
        norms, tokens, start = [], 0, time.perf_counter()
        for micro, total_tokens in mini_batches:
            for i, batch in enumerate(micro):
                stats = self._micro_step(collate(batch), total_tokens, boundary=i == len(micro) - 1)
                for k, v in stats.items():
                    sums[k] += v
                tokens += sum(len(s.input_ids) for s in batch)
            norms.append(dsc.step(self.engine))
        elapsed = time.perf_counter() - start
        steps = len(mini_batches)
        metrics = {k: v / steps for k, v in sums.items()}
        metrics |= {
            "grad_norm": float(np.mean(norms)),
            "tokens_per_s": tokens / max(elapsed, 1e-9),
            "optimizer_steps": steps,
        }
        return metrics

    def _micro_step(self, t: dict[str, torch.Tensor], total_tokens: int, boundary: bool) -> dict[str, float]:
        dev = self._device()
        mask, targets = t["mask"].to(dev), t["targets"].to(dev)
        logits = self._forward(t)
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        logprobs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        s = self.loss_settings
        loss_sum, stats = policy_loss_terms(logprobs, t["old_logprobs"].to(dev), t["advantages"].to(dev), mask, s)
        extra = {}
        if s.kl_coef > 0:
            with torch.no_grad():
                ref_logits = self._forward(t, self.reference)
            kl = (kl_k3(logprobs, token_logprobs(ref_logits, targets)) * mask).sum()
            loss_sum = loss_sum + s.kl_coef * kl
            extra["kl_ref"] = kl.item()
        if s.entropy_coef > 0:
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            loss_sum = loss_sum - s.entropy_coef * (entropy * mask).sum()
        else:
            with torch.no_grad():
                entropy = -(logp_all.exp() * logp_all).sum(-1)
        # DeepSpeed averages gradients over ranks; scaling by world_size makes the result the global token mean.
        scale = self.world_size / max(total_tokens, 1)
        dsc.backward(self.engine, loss_sum * scale, boundary)
        per_token = 1.0 / max(total_tokens, 1)
        out = {"loss": loss_sum.item() * per_token, "entropy": (entropy * mask).sum().item() * per_token}
        out |= {k: v.item() * per_token for k, v in stats.items()}
        out |= {k: v * per_token for k, v in extra.items()}
        return out

    def state_dict_ref(self) -> list | None:
        """Gather the full weights (all ranks take part under ZeRO-3); rank 0 puts them in the object store once and
        returns `[ref]` (wrapped so that Ray does not resolve it on the way back)."""
        state = dsc.full_state_dict(self.engine, self.config.learner.zero_stage)
        return [ray.put(state)] if state is not None else None

    def join_weight_group(self, host: str, port: int, world_size: int) -> None:
        """GPU, rank 0: open the NCCL group shared with every vLLM worker (rank 0 of world_size)."""
        from actors.vllm_compat import nccl_group

        self._weight_group = nccl_group(host, port, 0, world_size, torch.cuda.current_device())

    def prepare_broadcast(self) -> list[tuple[str, str, list[int]]] | None:
        """Gather the full weights (all ranks, under ZeRO-3); rank 0 keeps them and returns (name, dtype, shape) of
        each tensor in broadcast order. With tied embeddings lm_head is sent explicitly (vLLM keeps its own copy)."""
        state = dsc.full_state_dict(self.engine, self.config.learner.zero_stage)
        if state is None:
            return None
        if self.tied and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        self._outgoing = state
        return [(k, str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in state.items()]

    def broadcast_prepared(self) -> int:
        """GPU, rank 0: broadcast the prepared tensors, in order, to the engines waiting in `receive_weights`."""
        device = torch.device("cuda", torch.cuda.current_device())
        for tensor in self._outgoing.values():
            self._weight_group.broadcast(tensor.to(device), src=0, stream=torch.cuda.current_stream())
        torch.cuda.synchronize()
        sent, self._outgoing = len(self._outgoing), None
        return sent

    def save(self, folder: str, export_hf: str | None, tokenizer_path: str) -> None:
        """DeepSpeed checkpoint (model, optimizer, scheduler, per-rank RNG) into `folder`; rank 0 also exports the
        policy as an HF folder that vLLM and Serve load."""
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        dsc.save_checkpoint(self.engine, folder, {f"rng_rank{self.rank}": rng})
        state = dsc.full_state_dict(self.engine, self.config.learner.zero_stage)
        if state is not None and export_hf:
            self._export(state, export_hf, tokenizer_path)

    def _export(self, state: dict[str, torch.Tensor], folder: str, tokenizer_path: str) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        config = AutoConfig.from_pretrained(self.config.model.path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(state, assign=True, strict=False)
        model.tie_weights()
        model.save_pretrained(folder, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(folder)

    def load(self, folder: str) -> None:
        client = dsc.load_checkpoint(self.engine, folder)
        rng = client.get(f"rng_rank{self.rank}")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])

    def ready(self) -> bool:
        return self.engine is not None


LearnerActor = ray.remote(LearnerRank)


class LearnerGroup:
    """R LearnerRanks in one placement group, used as one learner."""

    def __init__(self, config: Config, bundles: list[dict] | None = None, strategy: str = "PACK"):
        lcfg = config.learner
        self.config, self.world_size = config, lcfg.replicas
        bundle = {"CPU": lcfg.num_cpus} | ({"GPU": lcfg.num_gpus} if lcfg.num_gpus else {}) | lcfg.resources
        self.pg = placement_group(bundles or [bundle] * self.world_size, strategy=strategy)
        ray.get(self.pg.ready())
        env = {"env_vars": {"OMP_NUM_THREADS": str(lcfg.cpu_threads)}}
        self.ranks = [
            LearnerActor.options(
                num_cpus=lcfg.num_cpus,
                num_gpus=lcfg.num_gpus,
                runtime_env=env,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
            ).remote(config, r, self.world_size)
            for r in range(self.world_size)
        ]
        addr, port = ray.get(self.ranks[0].address.remote())
        self.num_params = ray.get([r.setup.remote(addr, port) for r in self.ranks])[0]

    def train(self, samples: list[TrainSample], seed: int = 0) -> dict:
        """PPO epochs × mini-batches over `samples`; returns the metrics averaged over ranks and steps."""
        g = self.config.grpo
        rng = random.Random(seed)
        per_rank: list[list] = [[] for _ in range(self.world_size)]
        for _ in range(g.ppo_epochs):
            order = samples[:]
            rng.shuffle(order)
            for chunk in np.array_split(np.arange(len(order)), min(g.mini_batches, len(order))):
                mini = [order[i] for i in chunk]
                total = sum(s.trained_tokens for s in mini)
                for r, micro in enumerate(pack(mini, self.config.learner.micro_batch_tokens, self.world_size)):
                    per_rank[r].append((micro, total))
        results = ray.get([rank.train.remote(plan) for rank, plan in zip(self.ranks, per_rank)])
        merged = {
            k: float(np.sum([m[k] for m in results])) for k in ("loss", "clip_frac", "approx_kl", "entropy", "kl_ref")
        }
        merged |= {
            "grad_norm": results[0]["grad_norm"],
            "tokens_per_s": float(np.sum([m["tokens_per_s"] for m in results])),
        }
        return merged

    def weights(self) -> ray.ObjectRef:
        """The full policy weights as one object-store ref (rank 0 puts them; all ranks gather under ZeRO-3)."""
        refs = ray.get([r.state_dict_ref.remote() for r in self.ranks])
        return refs[0][0]

    def save(self, folder: str, export_hf: str | None) -> None:
        ray.get([r.save.remote(folder, export_hf, self.config.model.tokenizer_path) for r in self.ranks])

    def load(self, folder: str) -> None:
        ray.get([r.load.remote(folder) for r in self.ranks])

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)
        ray.util.remove_placement_group(self.pg)
