"""Med-R³'s main job: the three progressive stages — reasoning → retrieval → joint — in one Ray job.

    python pipelines/progressive.py --config configs/default.yaml [--set key=value ...] [--fresh]
    ray job submit --working-dir . -- python pipelines/progressive.py --config configs/default.yaml

Each step reads top to bottom: generate (with retrieval) → reward → advantage → train → sync → checkpoint → log.
Rerunning with the same output directory resumes from the last checkpoint: same stage, next step, same data order.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from medr3.config import STAGE_NAMES, Config, ConfigError, StageConfig, load_config, missing_paths  # noqa: E402
from medr3.data import load_dataset  # noqa: E402

log = logging.getLogger("medr3.progressive")


class Timer:
    """Wall time per phase, reported as `timing/<phase>`."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"timing/{k}": v for k, v in self.seconds.items()}


class ProgressiveTrainer:
    """Owns the actors and the position (stage, step, weights version) of one run."""

    def __init__(self, config: Config, fresh: bool = False):
        import ray
        from transformers import AutoTokenizer

        from actors.generator import GeneratorPool
        from actors.learner import LearnerGroup
        from actors.ray_metrics import RayMetrics
        from actors.retriever import SearchPool
        from actors.reward import create_reward_actors
        from actors.weight_sync import make_weight_sync
        from medr3.checkpoint import CheckpointDir
        from medr3.metrics import MetricsLog

        self.config = config
        self.out = Path(config.run.output_dir)
        self.ckpts = CheckpointDir(self.out / "checkpoints", keep=config.run.keep_checkpoints)
        resume = self.ckpts.latest() if config.run.resume and not fresh else None
        self.pos = {"stage_index": 0, "stage_step": 0, "global_step": 0, "version": 0, "gate_streak": 0}
        self.tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer_path)
        searching = any(stage.retrieval and stage.steps for _, stage in config.stages.ordered())
        self.search = SearchPool(config.retriever) if searching else None
        self.generators = GeneratorPool(config)
        self.rewards = create_reward_actors(config.reward, config.data.corpus)
        self.learner = LearnerGroup(config)
        self.generators.wait_ready()
        self.push_weights = make_weight_sync(config, self.learner, self.generators)
        if resume:
            path, meta = resume
            self.learner.load(str(path / "ds"))
            self.pos = {k: meta[k] for k in self.pos}
            self.sync()  # the generators restarted from the base model: bring them to the checkpoint's weights
            print(f"[resume] {path.name}: stage {meta['stage_index']}, next step {meta['stage_step']}", flush=True)
        self.log = MetricsLog(self.out, resume_after=self.pos["global_step"])
        self.ray_metrics = RayMetrics()
        self.pool = ThreadPoolExecutor(max_workers=1)  # pipelined mode: the next step's rollout
        self.prefetch: tuple[tuple, Future] | None = None
        self._ray = ray

    # -- the job ---------------------------------------------------------------------------------------------------

    def run(self) -> None:
        from medr3.report import write_report
        from medr3.stages import Gate

        for index, (name, stage) in enumerate(self.config.stages.ordered()):
            if index < self.pos["stage_index"] or stage.steps == 0:
                continue
            if self.pos["stage_step"] >= stage.steps:  # resumed with a config whose stage is now shorter
                self.pos.update(stage_index=index + 1, stage_step=0, gate_streak=0)
                continue
            questions = self.stage_questions(name, stage)
            gate = Gate(stage.gate, self.pos["gate_streak"])
            while True:
                record = self.step(name, stage, questions)
                advance = gate.update(record)
                done = advance or self.pos["stage_step"] + 1 >= stage.steps
                # The position saved is the next step to run: the next stage's first once this one is done.
                self.pos.update(stage_step=self.pos["stage_step"] + 1, gate_streak=gate.streak)
                if done:
                    self.pos.update(stage_index=index + 1, stage_step=0, gate_streak=0)
                if done or self.pos["global_step"] % self.config.run.checkpoint_every == 0:
                    with self.timer("checkpoint"):
                        self.checkpoint(name)
                self.finish_record(record)
                if advance:
                    print(
                        f"[gate] {name}: {stage.gate.metric} >= {stage.gate.threshold} for "
                        f"{stage.gate.patience} steps: next stage",
                        flush=True,
                    )
                if done:
                    break
        png, md = write_report(self.out)
        print(f"[done] {self.pos['global_step']} steps; report {png}, summary {md}", flush=True)

    def step(self, name: str, stage: StageConfig, questions: list) -> dict:
        from actors.reward import score_batch
        from medr3.experience import advantages, reward_inputs, rollout_metrics, train_samples

        self.timer, g, step = Timer(), self.config.grpo, self.pos["global_step"]
        self.step_start = time.perf_counter()
        with self.timer("generate"):
            trajs, retrieve_s = self.rollout_for(name, stage, questions, self.pos["stage_step"])
        self.timer.seconds["generate"] -= retrieve_s
        self.timer.seconds["retrieve"] = retrieve_s
        self.maybe_prefetch(name, stage, questions)
        with self.timer("reward"):
            scores = score_batch(self.rewards, reward_inputs(trajs, stage, self.config), stage.reward)
        with self.timer("advantage"):
            advs = advantages(scores.totals, g.samples_per_prompt, g.estimator, g.advantage_eps)
            samples = train_samples(trajs, advs)
        with self.timer("train"):
            train = self.learner.train(samples, seed=self.config.run.seed * 100_003 + step) if samples else {}
        with self.timer("sync"):
            self.sync()
        self.pos["global_step"] += 1
        record = {"global_step": self.pos["global_step"], "stage": name, "stage_step": self.pos["stage_step"] + 1}
        record |= scores.metrics() | rollout_metrics(trajs) | {f"train/{k}": v for k, v in train.items()}
        record["train/kl"] = train.get("approx_kl", 0.0)
        self.log.sample(
            {
                "global_step": record["global_step"],
                "stage": name,
                "question": trajs[0].question.question,
                "gold": trajs[0].question.answer_text,
                "response": trajs[0].text,
                "reward": scores.items[0],
            }
        )
        return record

    def finish_record(self, record: dict) -> None:
        from medr3.metrics import progress_line

        record |= self.timer.metrics()
        record["timing/step"] = time.perf_counter() - self.step_start
        record["weights_version"] = self.pos["version"]
        self.log.log(record)
        self.ray_metrics.log(record)
        print(progress_line(record), flush=True)

    # -- phases ----------------------------------------------------------------------------------------------------

    def stage_questions(self, name: str, stage: StageConfig) -> list:
        questions = []
        for spec in stage.train:
            items, report = load_dataset(spec)
            if report.skipped:
                print(f"[data] {report.summary()} (first: {report.skipped[0]})", flush=True)
            questions += items
        return questions

    def rollout_for(self, name: str, stage: StageConfig, questions: list, stage_step: int):
        """This step's trajectories: the prefetched ones in pipelined mode, else generated now."""
        key = (name, stage_step)
        if self.prefetch and self.prefetch[0] == key:
            _, future = self.prefetch
            self.prefetch = None
            return future.result()
        return self.generate(name, stage, questions, stage_step)

    def maybe_prefetch(self, name: str, stage: StageConfig, questions: list) -> None:
        """Pipelined mode: start the next step's rollout now; it overlaps training (one step off-policy, corrected
        by the importance ratio against the generator's logprobs)."""
        nxt = self.pos["stage_step"] + 1
        if self.config.grpo.pipelined and nxt < stage.steps:
            self.prefetch = ((name, nxt), self.pool.submit(self.generate, name, stage, questions, nxt))

    def generate(self, name: str, stage: StageConfig, questions: list, stage_step: int):
        from medr3.rollout import Rollout, RolloutSettings
        from medr3.stages import batch_for_step

        g, r = self.config.grpo, self.config.rollout
        batch = batch_for_step(questions, name, stage_step, g.prompts_per_step, self.config.run.seed)
        spent = [0.0]

        def search(queries: list[str]) -> list[list[dict]]:
            start = time.perf_counter()
            try:
                return self.search.batch_search(queries, k=self.config.retriever.top_k)
            finally:
                spent[0] += time.perf_counter() - start

        settings = RolloutSettings(
            g.max_response_tokens,
            self.config.generator.max_model_len,
            r.max_searches,
            r.max_document_tokens,
            self.config.run.seed,
        )
        rollout = Rollout(
            self.tokenizer,
            lambda reqs: self.generators.generate(reqs, g.temperature, g.top_p),
            search if self.search else None,
            settings,
        )
        step_index = STAGE_NAMES.index(name) * 1_000_000 + stage_step  # distinct, reproducible sampling seeds
        trajs = rollout.run(batch, g.samples_per_prompt, search=stage.retrieval, step=step_index)
        return trajs, spent[0]

    def sync(self) -> None:
        """Learner rank 0 → every generator, through the object store (one put, N reads), version-stamped."""
        self.pos["version"] += 1
        self.push_weights(self.pos["version"])

    def checkpoint(self, stage_name: str) -> None:
        tmp = self.ckpts.begin()
        self.learner.save(str(tmp / "ds"), export_hf=str(tmp / "hf"))
        self.ckpts.commit(tmp, self.pos["global_step"], {**self.pos, "stage": stage_name})

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.log.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configs/).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a config key.")
    parser.add_argument("--fresh", action="store_true", help="Ignore existing checkpoints in the output directory.")
    parser.add_argument("--resume", action="store_true", help="Resume from the last checkpoint (the default).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.set)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = missing_paths(config)
    if missing:
        print(
            "error: inputs missing (run ./setup.sh to build models and index):\n  " + "\n  ".join(missing),
            file=sys.stderr,
        )
        return 2
    from actors.cluster import init_ray

    init_ray()
    try:
        trainer = ProgressiveTrainer(config, fresh=args.fresh)
    except RuntimeError as err:  # an actor that cannot start (missing index, unreachable Qdrant URL, ...)
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        trainer.run()
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
