"""DeepSpeed GRPO learner: `LearnerRank` (plain class, one ZeRO rank), `LearnerActor` (its Ray shell) and
`LearnerGroup` (R ranks in a placement group, driven as one).

Each optimizer step takes a mini-batch dealt into the same number of micro-batches on every rank; the loss is the
token mean over the whole mini-batch (all micro-batches, all ranks), as the release's token-mean aggregation.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import ray
import torch
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors import deepspeed_compat as dsc
from actors.cluster import actor_env
from medr3.config import Config
from medr3.grpo import LossSettings, kl_k3, policy_loss_terms
from medr3.hardware import resolve_model_dtype, resolve_precision
from medr3.packing import TrainSample, collate, pack


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch's fused AdamW (one kernel for all tensors, CPU and CUDA); foreach where fused is unavailable."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


class LearnerRank:
    """One DeepSpeed rank holding the policy (and a frozen reference when the KL coefficient is positive).

    Master weights and optimizer state are fp32; the forward and backward run under bf16 autocast when
    `learner.precision` resolves to bf16. Logprobs are of the sampling distribution: logits / grpo.temperature.
    """

    def __init__(self, config: Config, rank: int, world_size: int):
        self.config, self.rank, self.world_size = config, rank, world_size
        torch.set_num_threads(config.learner.cpu_threads)
        self.engine = self.reference = None
        self.precision = resolve_precision(config.learner.precision)
        self.recompute = config.recompute_old_logprobs()
        self._saving: threading.Thread | None = None
        self._save_error: BaseException | None = None

    def address(self) -> tuple[str, int]:
        """Rank 0's address and a free port for the process group rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> str:
        """Join the process group and build the DeepSpeed engine; returns the resolved precision."""
        from transformers import AutoModelForCausalLM

        cfg, lcfg = self.config, self.config.learner
        backend = lcfg.backend if lcfg.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
        dsc.init_distributed(backend, self.rank, self.world_size, master_addr, master_port)
        torch.manual_seed(cfg.run.seed + self.rank)
        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        if lcfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.lr = cfg.grpo.lr
        optimizer = _adamw(model.parameters(), cfg.grpo.lr, cfg.grpo.weight_decay)
        # Constant, as the release; the factor lets the warm start run at its own rate on the same optimizer.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: self.lr / cfg.grpo.lr)
        # DeepSpeed's own bf16 mode is off: autocast gives bf16 compute over fp32 master weights and Adam state.
        self.engine = dsc.initialize(
            model, optimizer, scheduler, dsc.ds_config(lcfg.zero_stage, False, cfg.grpo.grad_clip)
        )
        if cfg.grpo.kl_coef > 0:
            reference = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
            self.reference = reference.to(self._device()).eval().requires_grad_(False)
        self.loss_settings = LossSettings(
            cfg.grpo.clip_low, cfg.grpo.clip_high, cfg.grpo.dual_clip, cfg.grpo.kl_coef, cfg.grpo.entropy_coef
        )
        return self.precision

    def _device(self) -> torch.device:
        return self.engine.device

    def _autocast(self):
        return torch.autocast(self._device().type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _logprobs(self, t: dict, model=None, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the generated tokens under `model` (default: the policy) at `temperature`.

        Returns `(logprobs: (B, T), 0 where mask is 0; logp_rows: (N, V), the full log-softmax of the N generated
        positions)`. Only those N positions go through the vocabulary projection: prompts, inserted documents and
        padding never pay for it, the costliest part with a large vocabulary.
        """
        model, dev = model or self.engine.module, self._device()
        mask = t["mask"].to(dev) > 0
        with self._autocast():
            hidden = model.get_decoder()(
                input_ids=t["input_ids"].to(dev), attention_mask=t["attention_mask"].to(dev), use_cache=False
            ).last_hidden_state
            logits = model.get_output_embeddings()(hidden[:, t["first"] : -1][mask])
        logp_rows = torch.log_softmax(logits.float() / temperature, dim=-1)
        picked = logp_rows.gather(-1, t["targets"].to(dev)[mask].unsqueeze(-1)).squeeze(-1)
        logprobs = torch.zeros(mask.shape, dtype=picked.dtype, device=dev)
        logprobs[mask] = picked
        return logprobs, logp_rows

    @torch.no_grad()
    def _recompute_old(self, micro: list[list[TrainSample]]) -> dict[str, float]:
        """Replace each sample's old logprobs (the generator's) by the learner's, in eval mode; returns the sums of
        |learner − generator| and of generated tokens (`logprob_gap`)."""
        self.engine.eval()
        gap = tokens = 0.0
        for batch in micro:
            t = collate(batch)
            lp, _ = self._logprobs(t, temperature=self.config.grpo.temperature)
            lp, mask = lp.cpu(), t["mask"]
            gap += ((lp - t["old_logprobs"]).abs() * mask).sum().item()
            tokens += mask.sum().item()
            for i, s in enumerate(batch):
                start, end = s.prompt_len - 1 - t["first"], len(s.input_ids) - 1 - t["first"]
                s.old_logprobs = lp[i, start:end].tolist()
        return {"gap": gap, "tokens": tokens}

    def train(self, mini_batches: list[tuple[list[list[TrainSample]], int]]) -> dict:
        """GRPO: one optimizer step per `(micro_batches, total_tokens)` entry; returns averaged metrics.

        With recompute and a single mini-batch the ratio of the first (only) update is exactly 1: the old logprobs
        are the training forward's own, detached, and no separate pass runs.
        """
        self._set_lr(self.config.grpo.lr)
        reuse = self.recompute and len(mini_batches) == 1
        gap = None
        if self.recompute and not reuse:
            gap = self._recompute_old([b for micro, _ in mini_batches for b in micro])

        def micro_step(t: dict, total: int, boundary: bool, first: bool) -> dict[str, float]:
            return self._grpo_micro_step(t, total, boundary, reuse, measure_gap=first and gap is None)

        return self._optimize(mini_batches, micro_step, gap)

    def train_sft(self, mini_batches: list[tuple[list[list[TrainSample]], int]], lr: float) -> dict:
        """Supervised warm start: token-mean cross-entropy on the tokens whose mask is 1, one optimizer step per
        entry, at learning rate `lr` (the GRPO stages then go on at grpo.lr with the same optimizer state)."""
        self._set_lr(lr)
        return self._optimize(mini_batches, lambda t, total, boundary, first: self._sft_micro_step(t, total, boundary))

    def _optimize(self, mini_batches, micro_step, gap: dict | None = None) -> dict:
        self.engine.train()
        sums: dict[str, float] = defaultdict(float)
        norms, tokens, start = [], 0, time.perf_counter()
        for index, (micro, total_tokens) in enumerate(mini_batches):
            for i, batch in enumerate(micro):
                stats = micro_step(collate(batch), total_tokens, i == len(micro) - 1, index == 0)
                for k, v in stats.items():
                    sums[k] += v
                tokens += sum(len(s.input_ids) for s in batch)
            norms.append(dsc.step(self.engine))
        elapsed = time.perf_counter() - start
        steps = len(mini_batches)
        measured = {"gap": sums.pop("gap_sum", 0.0), "tokens": sums.pop("gap_tokens", 0.0)}
        gap = gap or measured
        metrics = {k: v / steps for k, v in sums.items()}
        metrics |= {
            "grad_norm": float(np.mean(norms)),
            "tokens_per_s": tokens / max(elapsed, 1e-9),
            "optimizer_steps": steps,
            "logprob_gap_sum": gap["gap"],
            "logprob_gap_tokens": gap["tokens"],
        }
        return metrics

    def _set_lr(self, lr: float) -> None:
        self.lr = lr
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _grpo_micro_step(
        self, t: dict, total_tokens: int, boundary: bool, reuse: bool, measure_gap: bool
    ) -> dict[str, float]:
        dev, s = self._device(), self.loss_settings
        mask = t["mask"].to(dev)
        logprobs, logp_rows = self._logprobs(t, temperature=self.config.grpo.temperature)
        old = t["old_logprobs"].to(dev)
        out: dict[str, float] = {}
        if measure_gap:  # `old` holds the generator's logprobs, the policy has not moved yet: the numerics gap
            out["gap_sum"] = ((logprobs.detach() - old).abs() * mask).sum().item()
            out["gap_tokens"] = mask.sum().item()
        if reuse:
            old = logprobs.detach()
        loss_sum, stats = policy_loss_terms(logprobs, old, t["advantages"].to(dev), mask, s)
        if s.kl_coef > 0:
            with torch.no_grad():
                ref, _ = self._logprobs(t, self.reference, temperature=self.config.grpo.temperature)
            kl = (kl_k3(logprobs, ref) * mask).sum()
            loss_sum = loss_sum + s.kl_coef * kl
            stats["kl_ref"] = kl.detach()
        entropy = -(logp_rows.exp() * logp_rows).sum(-1)  # (N,): generated positions only
        if s.entropy_coef > 0:
            loss_sum = loss_sum - s.entropy_coef * entropy.sum()
        stats["entropy"] = entropy.detach().sum()
        # DeepSpeed averages gradients over ranks; scaling by world_size makes the result the global token mean.
        dsc.backward(self.engine, loss_sum * self.world_size / max(total_tokens, 1), boundary)
        per_token = 1.0 / max(total_tokens, 1)
        out |= {"loss": loss_sum.item() * per_token} | {k: v.item() * per_token for k, v in stats.items()}
        return out

    def _sft_micro_step(self, t: dict, total_tokens: int, boundary: bool) -> dict[str, float]:
        mask = t["mask"].to(self._device())
        logprobs, _ = self._logprobs(t)
        nll = -(logprobs * mask).sum()
        dsc.backward(self.engine, nll * self.world_size / max(total_tokens, 1), boundary)
        return {"loss": nll.item() / max(total_tokens, 1)}

    def state_dict_ref(self) -> list | None:
        """Gather the full weights (all ranks take part under ZeRO-3); rank 0 puts them in the object store once and
        returns `[ref]` (wrapped so that Ray does not resolve it on the way back)."""
        state = dsc.full_state_dict(self.engine, self.config.learner.zero_stage)
        return [ray.put(self._for_generator(state))] if state is not None else None

    def _for_generator(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights in the generator's dtype (model.dtype): half the bytes to move under bf16, and vLLM then loads
        them without a per-tensor dtype warning."""
        dtype = getattr(torch, resolve_model_dtype(self.config.model.dtype))
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

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
        self._outgoing = state = self._for_generator(state)
        return [(k, str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in state.items()]

    def broadcast_prepared(self) -> int:
        """GPU, rank 0: broadcast the prepared tensors, in order, to the engines waiting in `receive_weights`."""
        device = torch.device("cuda", torch.cuda.current_device())
        for tensor in self._outgoing.values():
            self._weight_group.broadcast(tensor.to(device), src=0, stream=torch.cuda.current_stream())
        torch.cuda.synchronize()
        sent, self._outgoing = len(self._outgoing), None
        return sent

    def save(self, folder: str, export_hf: str | None, tokenizer_path: str, background: bool = True) -> None:
        """Checkpoint into `folder`: DeepSpeed state (model, optimizer, scheduler), this rank's RNG state, and on
        rank 0 an HF export of the policy that vLLM and Serve load.

        The state is copied in memory now and written by a thread (`save_done` reports when it is on disk), so
        training goes on meanwhile; the driver commits the folder only once every rank's write has finished.
        """
        self.save_done(wait=True)  # one write in flight at a time
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        files = dsc.snapshot_checkpoint(self.engine, folder, {})
        files.append((str(Path(folder) / f"rng_rank{self.rank}.pt"), rng))
        state = dsc.full_state_dict(self.engine, self.config.learner.zero_stage) if export_hf else None
        self._save_error = None
        self._saving = threading.Thread(
            target=self._write, args=(files, state, export_hf, tokenizer_path), name="checkpoint-writer", daemon=True
        )
        self._saving.start()
        if not background:
            self.save_done(wait=True)

    def _write(self, files, state, export_hf, tokenizer_path) -> None:
        try:
            dsc.write_snapshot(files)
            if state is not None and export_hf:
                self._export(state, export_hf, tokenizer_path)
        except BaseException as err:  # reported by save_done on the actor's thread
            self._save_error = err

    def save_done(self, wait: bool = False) -> bool:
        """Whether the last checkpoint write has finished (blocking with `wait`); re-raises a failed write."""
        if self._saving is not None:
            if wait:
                self._saving.join()
            if self._saving.is_alive():
                return False
            self._saving = None
        if self._save_error is not None:
            err, self._save_error = self._save_error, None
            raise RuntimeError(f"learner rank {self.rank}: checkpoint write failed: {err}") from err
        return True

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
        dsc.load_checkpoint(self.engine, folder)
        rng_file = Path(folder) / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=False)
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
        self.ranks = [
            LearnerActor.options(
                num_cpus=lcfg.num_cpus,
                num_gpus=lcfg.num_gpus,
                runtime_env=actor_env(f"learner-{r}", lcfg.cpu_threads),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
            ).remote(config, r, self.world_size)
            for r in range(self.world_size)
        ]
        addr, port = ray.get(self.ranks[0].address.remote())
        self.precision = ray.get([r.setup.remote(addr, port) for r in self.ranks])[0]

    def train(self, samples: list[TrainSample], seed: int = 0) -> dict:
        """GRPO: PPO epochs × mini-batches over `samples`; returns the metrics averaged over ranks and steps."""
        g = self.config.grpo
        plans = self._plans(samples, seed, g.ppo_epochs, g.mini_batches)
        results = ray.get([rank.train.remote(plan) for rank, plan in zip(self.ranks, plans)])
        merged = {k: float(np.sum([m.get(k, 0.0) for m in results])) for k in ("loss", "clip_frac", "approx_kl",
                                                                              "entropy", "kl_ref")}  # fmt: skip
        gap_tokens = sum(m["logprob_gap_tokens"] for m in results)
        merged["logprob_gap"] = sum(m["logprob_gap_sum"] for m in results) / max(gap_tokens, 1)
        return merged | self._speed(results)

    def train_sft(self, samples: list[TrainSample], batch_size: int, lr: float, seed: int = 0) -> dict:
        """Warm start: one optimizer step per `batch_size` samples (in a seeded order), token-mean cross-entropy."""
        mini_batches = max(1, round(len(samples) / batch_size))
        results = ray.get(
            [r.train_sft.remote(p, lr) for r, p in zip(self.ranks, self._plans(samples, seed, 1, mini_batches))]
        )
        return {"loss": float(np.sum([m["loss"] for m in results]))} | self._speed(results)

    def _plans(self, samples: list[TrainSample], seed: int, epochs: int, mini_batches: int) -> list[list]:
        """Per rank, `(micro_batches, total_tokens)` per optimizer step: `epochs` seeded shuffles of `samples`,
        each split into `mini_batches`, each packed into the same number of micro-batches on every rank."""
        rng = random.Random(seed)
        per_rank: list[list] = [[] for _ in range(self.world_size)]
        for _ in range(epochs):
            order = samples[:]
            rng.shuffle(order)
            for chunk in np.array_split(np.arange(len(order)), min(mini_batches, len(order))):
                mini = [order[i] for i in chunk]
                total = sum(s.trained_tokens for s in mini)
                for r, micro in enumerate(pack(mini, self.config.learner.micro_batch_tokens, self.world_size)):
                    per_rank[r].append((micro, total))
        return per_rank

    @staticmethod
    def _speed(results: list[dict]) -> dict:
        return {
            "grad_norm": results[0]["grad_norm"],
            "tokens_per_s": float(np.sum([m["tokens_per_s"] for m in results])),
            "optimizer_steps": results[0]["optimizer_steps"],
        }

    def weights(self) -> ray.ObjectRef:
        """The full policy weights as one object-store ref (rank 0 puts them; all ranks gather under ZeRO-3)."""
        refs = ray.get([r.state_dict_ref.remote() for r in self.ranks])
        return refs[0][0]

    def save(self, folder: str, export_hf: str | None, background: bool = True) -> None:
        """Snapshot every rank's state into `folder`; the files are written in the background (`save_done`)."""
        tokenizer = self.config.model.tokenizer_path
        ray.get([r.save.remote(folder, export_hf, tokenizer, background) for r in self.ranks])

    def save_done(self, wait: bool = False) -> bool:
        """Whether every rank has written its part of the last checkpoint (raises if a write failed)."""
        return all(ray.get([r.save_done.remote(wait) for r in self.ranks]))

    def load(self, folder: str) -> None:
        ray.get([r.load.remote(folder) for r in self.ranks])

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)
        ray.util.remove_placement_group(self.pg)
