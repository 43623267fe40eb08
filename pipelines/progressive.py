"""Med-R³'s main job: the three progressive stages — reasoning → retrieval → joint — in one Ray job.

    python pipelines/progressive.py --config configs/default.yaml [--set key=value ...] [--fresh] [--verbose]
    ray job submit --working-dir . -- python pipelines/progressive.py --config configs/default.yaml

Each step reads top to bottom: generate (with retrieval) → reward → advantage → train → sync → checkpoint → log.
Rerunning with the same output directory resumes from the last checkpoint: same stage, next step, same data order.
The console shows a header, one line per step with ETAs, transitions and results; engine and library logs go to
`<output_dir>/logs/` (`--verbose` shows them live instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from medr3.config import (  # noqa: E402
    STAGE_NAMES,
    Config,
    ConfigError,
    StageConfig,
    dump_config,
    load_config,
    missing_paths,
    needs_search,
)
from medr3.console import say, send_logs_to  # noqa: E402
from medr3.data import load_dataset  # noqa: E402
from medr3.retrieval.manifest import IndexNotReadyError, check_index  # noqa: E402
from medr3.stages import QuestionPool  # noqa: E402

WARMUP = "warmup"
ALL_STAGES = (WARMUP, *STAGE_NAMES)  # the position's stage_index counts in this order
EVAL_TEMPERATURE, EVAL_TOP_P = 0.6, 0.9  # the release's evaluation sampling (docs/method.md)
ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


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


@dataclass
class Workers:
    """What the trainer drives: the job's Ray actors (`start_workers`), or fakes in tests (tests/fakes.py)."""

    generators: Any  # generate(requests, temperature, top_p) -> completions
    search: Any  # batch_search(queries, k) -> documents per query; None when the run never searches
    score: Callable  # score(reward inputs, composition) -> BatchScores
    learner: Any  # train, train_sft, save, save_done, load
    push_weights: Callable[[int], None]  # learner -> every generator, stamped with the weights version
    ray_metrics: Any  # log(record): the step's metrics as Ray metrics
    restart: Callable[[], Workers] | None = None  # after a learner rank or reward actor died: new ones, same others


def start_workers(config: Config, keep: Workers | None = None) -> Workers:
    """The job's Ray actors; the generators are up and hold the base model when this returns. With `keep`, its
    generators and search actors stay (Ray restarts those by itself) and a new learner group and new reward actors
    start: `Workers.restart`, after one of them died (a ZeRO group cannot go on without a rank)."""
    import ray

    from actors.generator import GeneratorPool
    from actors.learner import LearnerGroup
    from actors.ray_metrics import RayMetrics
    from actors.retriever import SearchPool
    from actors.reward import create_reward_actors, score_batch
    from actors.weight_sync import make_weight_sync

    if keep:
        search, generators, ray_metrics = keep.search, keep.generators, keep.ray_metrics
    else:
        search = SearchPool(config.retriever) if needs_search(config) else None
        generators, ray_metrics = GeneratorPool(config), RayMetrics()
    rewards = create_reward_actors(config.reward, config.data.corpus)
    learner = LearnerGroup(config)
    generators.wait_ready()
    push_weights = make_weight_sync(config, learner, generators)
    workers = Workers(generators, search, partial(score_batch, rewards), learner, push_weights, ray_metrics)

    def restart() -> Workers:
        learner.shutdown()
        for actor in rewards:
            ray.kill(actor)
        return start_workers(config, keep=workers)

    workers.restart = restart
    return workers


class ProgressiveTrainer:
    """Owns the workers and the position (stage, step, weights version) of one run."""

    def __init__(self, config: Config, fresh: bool = False, workers: Workers | None = None):
        from transformers import AutoTokenizer

        from medr3.checkpoint import CheckpointDir
        from medr3.run_log import MetricsLog, StepClock, read_metrics

        self.config = config
        self.out = Path(config.run.output_dir)
        self.ckpts = CheckpointDir(self.out / "checkpoints", keep=config.run.keep_checkpoints)
        if fresh:
            moved = self.ckpts.set_aside()
            if moved:
                say(f"[fresh] earlier checkpoints moved to {moved}")
            for name in ("final_eval.json", "final_eval_samples.jsonl"):
                (self.out / name).unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.config_text = dump_config(config, "The resolved config of this run (pipelines/progressive.py).")
        (self.out / "config.yaml").write_text(self.config_text, encoding="utf-8")
        resume = self.ckpts.latest() if config.run.resume else None
        self.pos = {"stage_index": 0, "stage_step": 0, "global_step": 0, "version": 0, "gate_streak": 0}
        self.pending_checkpoint: tuple[Path, int, dict] | None = None
        self.tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer_path)
        self.use(workers or start_workers(config))
        self.log = MetricsLog(self.out, resume_after=resume[1]["global_step"] if resume else 0)
        self.clock, self.eval_s = StepClock(), 0.0  # the ETAs: step times so far, the base evaluation's time
        for r in read_metrics(self.log.path) if self.log.path.exists() else []:
            self.clock.add(r["stage"], r.get("timing/step", 0.0))
        self.timer = Timer()
        if config.run.final_eval and not self.evaluated("base"):
            self.final_eval("base")  # the generators still hold the base model
        if resume:
            self.restore(resume)  # the generators hold the base model: bring them to the checkpoint's weights
            index, step = self.pos["stage_index"], self.pos["stage_step"]
            where = f"stage {ALL_STAGES[index]}, next step {step}" if index < len(ALL_STAGES) else "all stages done"
            say(f"[resume] {resume[0].name}: {where}")
        self.pool = ThreadPoolExecutor(max_workers=1)  # pipelined mode: the next step's rollout
        self.prefetch: tuple[tuple, Future] | None = None

    def use(self, w: Workers) -> None:
        self.workers = w
        self.generators, self.search, self.score, self.learner = w.generators, w.search, w.score, w.learner
        self.push_weights, self.ray_metrics = w.push_weights, w.ray_metrics

    # -- the job ---------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Train every stage, surviving up to `run.max_restarts` deaths of a learner rank or reward actor; then
        evaluate the final model and write the report."""
        from ray.exceptions import RayActorError

        from medr3.report import run_readme, write_report

        restarts = 0
        while True:
            try:
                self.train()
                break
            except RayActorError as err:
                restarts += 1
                self.recover(err, restarts)
        self.commit_checkpoint(wait=True)
        if self.config.run.final_eval:
            self.final_eval("final")
        latest = self.ckpts.latest()
        readme = run_readme(self.out, latest[0] if latest else None, ROOT, sys.executable)
        png, md = write_report(self.out, readme)
        say(f"[done] {self.pos['global_step']} steps; report {png}, summary {md}")
        say(readme)

    def train(self) -> None:
        """The warm start and the three stages, from the current position."""
        from medr3.stages import Gate

        warmup = self.config.stages.warmup
        if self.pos["stage_index"] == 0 and warmup.steps:
            self.warmup()
        self.pos["stage_index"] = max(self.pos["stage_index"], 1)
        if self.wants_warmup_eval() and self.pos["stage_index"] == 1 and self.pos["stage_step"] == 0:
            self.final_eval("warmup")  # the generators hold the warm start's weights: no GRPO step yet
        for index, (name, stage) in enumerate(self.config.stages.ordered(), start=1):
            if index < self.pos["stage_index"] or stage.steps == 0:
                continue
            if self.pos["stage_step"] >= stage.steps:  # resumed with a config whose stage is now shorter
                self.pos.update(stage_index=index + 1, stage_step=0, gate_streak=0)
                continue
            questions = self.stage_questions(name, stage)
            gate_note = f", gate {stage.gate.metric} >= {stage.gate.threshold}" if stage.gate else ""
            retrieval = "on" if stage.retrieval else "off"
            say(f"[stage] {name}: {stage.steps} steps, {questions.describe()}, retrieval {retrieval}{gate_note}")
            gate = Gate(stage.gate, self.pos["gate_streak"])
            while True:
                self.commit_checkpoint(wait=False)
                record = self.step(name, stage, questions)
                advance = gate.update(record)
                done = advance or self.pos["stage_step"] + 1 >= stage.steps
                self.advance(index, done, gate.streak)
                self.maybe_checkpoint(name, stage_end=done)
                self.finish_record(record)
                if advance:
                    say(
                        f"[gate] {name}: {stage.gate.metric} >= {stage.gate.threshold} for "
                        f"{stage.gate.patience} steps: next stage"
                    )
                if done:
                    break

    def recover(self, err: Exception, restarts: int) -> None:
        """After an actor died: new learner group and reward actors, back to the last checkpoint (the steps after it
        are redone, and logged once); past `run.max_restarts` restarts, stop naming the actor and the step."""
        from ray.exceptions import RayActorError

        found = re.search(r"class_name: (\w+)", str(err))  # how Ray's ActorDiedError names the actor
        who = found.group(1) if found else "an actor"
        step, limit = self.pos["global_step"] + 1, self.config.run.max_restarts
        if restarts > limit or not self.workers.restart:
            raise RuntimeError(f"{who} died in step {step}, after {limit} restarts (run.max_restarts)") from err
        try:  # a checkpoint being written when a reward actor died is still good
            self.commit_checkpoint(wait=True)
        except RayActorError:
            self.pending_checkpoint = None  # its writer died; the next save removes the folder
        self.prefetch = None
        latest = self.ckpts.latest()
        back_to = latest[0].name if latest else "the start"
        say(f"[restart] {who} died in step {step}: new learner and reward actors from {back_to} ({restarts}/{limit})")
        log.info("an actor died in step %d", step, exc_info=err)
        self.use(self.workers.restart())
        self.restore(latest)
        self.log.rewind(self.pos["global_step"])

    def restore(self, checkpoint: tuple[Path, dict] | None) -> None:
        """Load `checkpoint` (folder, meta) into the learner (None: the start, the learner's fresh weights), take its
        position and push its weights to the generators. The weights version only counts up: a generator refuses
        one it has already served."""
        path, meta = checkpoint or (None, dict.fromkeys(self.pos, 0))
        if path:
            self.learner.load(str(path / "ds"))
        version = self.pos["version"]
        self.pos = {k: meta[k] for k in self.pos}
        self.pos["version"] = max(version, self.pos["version"])
        self.sync()

    def advance(self, index: int, done: bool, streak: int = 0) -> None:
        """The position saved is the next step to run: the next stage's first once this one is done."""
        self.pos.update(stage_step=self.pos["stage_step"] + 1, gate_streak=streak)
        if done:
            self.pos.update(stage_index=index + 1, stage_step=0, gate_streak=0)

    def warmup(self) -> None:
        """Supervised warm start on demonstrations of the protocol; the generators get its weights at the end."""
        w, seed = self.config.stages.warmup, self.config.run.seed
        self.timer = Timer()
        with self.timer("demos"):
            samples = [d.train_sample() for d in self.build_demos()]
        if not samples:
            raise RuntimeError("stages.warmup: no demonstration could be built from its training files")
        done = False
        while not done:
            self.commit_checkpoint(wait=False)
            self.step_start = time.perf_counter()
            step = self.pos["stage_step"]
            batch = [samples[(step * w.batch_size + i) % len(samples)] for i in range(w.batch_size)]
            with self.timer("train"):
                train = self.learner.train_sft(batch, w.batch_size, w.lr, seed=seed * 100_003 + step)
            done = step + 1 >= w.steps
            if done:
                with self.timer("sync"):
                    self.sync()
            self.pos["global_step"] += 1
            record = {"global_step": self.pos["global_step"], "stage": WARMUP, "stage_step": step + 1}
            record |= {f"train/{k}": v for k, v in train.items()}
            self.advance(0, done)
            self.maybe_checkpoint(WARMUP, stage_end=done)
            self.finish_record(record)
            self.timer = Timer()

    def build_demos(self) -> list:
        from medr3.demos import DemoReport, build_demos, demo_plan
        from medr3.rollout import RolloutSettings

        w, seed = self.config.stages.warmup, self.config.run.seed
        demos, report = [], DemoReport()
        for kind, questions, count in demo_plan(w, seed):
            budget = None if kind == "search" else w.reasoning_tokens  # search demos carry documents
            settings = RolloutSettings.from_config(self.config, max_response_tokens=budget)
            built, part = build_demos(self.tokenizer, {kind: questions}, {kind: count}, settings, self.search_fn())
            demos += built
            report.add(part)
        say(f"[warmup] {report.summary()}")
        random.Random(f"{seed}/warmup").shuffle(demos)
        return demos

    def step(self, name: str, stage: StageConfig, questions: QuestionPool) -> dict:
        from medr3.experience import (
            advantages,
            group_means,
            reward_inputs,
            rollout_metrics,
            train_samples,
            uniform_groups,
        )

        self.timer, g, step = Timer(), self.config.grpo, self.pos["global_step"]

        self.step_start = time.perf_counter()
        with self.timer("generate"):
            trajs, retrieve_s = self.rollout_for(name, stage, questions, self.pos["stage_step"])
        self.timer.seconds["generate"] -= retrieve_s
        self.timer.seconds["retrieve"] = retrieve_s
        self.maybe_prefetch(name, stage, questions)
        with self.timer("reward"):
            scores = self.score(reward_inputs(trajs, stage, self.config), stage.reward)
        with self.timer("advantage"):
            n = g.samples_per_prompt
            advs = advantages(scores.totals, n, g.estimator, g.advantage_eps)
            uniform = uniform_groups(scores.totals, n)
            samples = train_samples(trajs, advs, n, skip=uniform if g.skip_uniform_groups else ())
        if samples:  # else the weights stay as they are: nothing to train, nothing to push
            with self.timer("train"):
                train = self.learner.train(samples, seed=self.config.run.seed * 100_003 + step)
            with self.timer("sync"):
                self.sync()
        else:
            train = {}
        self.pos["global_step"] += 1
        record = {"global_step": self.pos["global_step"], "stage": name, "stage_step": self.pos["stage_step"] + 1}
        record |= scores.metrics() | rollout_metrics(trajs) | {f"train/{k}": v for k, v in train.items()}
        record["train/uniform_groups"] = sum(uniform) / len(uniform)
        record["train/samples"] = len(samples)
        record["reward/group_means"] = group_means(scores.totals, n)
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
        from medr3.run_log import progress_line

        record |= self.timer.metrics()
        record["timing/step"] = time.perf_counter() - self.step_start
        record["weights_version"] = self.pos["version"]
        self.log.log(record)
        self.ray_metrics.log(record)
        self.clock.add(record["stage"], record["timing/step"])
        say(progress_line(record, stage_steps(self.config)[record["stage"]], *self.etas(record)))

    def etas(self, record: dict) -> tuple[float | None, float | None, bool]:
        """Seconds left in `record`'s stage and in the job (its later stages, and the final evaluation as long as
        the base one took), from the mean step time so far of each stage (a gate may end a stage sooner); and
        whether the job's is a lower bound (during the warm start no GRPO step is timed yet)."""
        steps, stage = stage_steps(self.config), record["stage"]
        left = {stage: steps[stage] - record["stage_step"]}
        later = {name: steps[name] for name in ALL_STAGES[ALL_STAGES.index(stage) + 1 :]}
        evals = self.config.run.final_eval + (stage == WARMUP and self.wants_warmup_eval())
        final_eval = self.eval_s * evals
        job = self.clock.remaining(left | later, final_eval)
        if job is not None:
            return self.clock.remaining(left), job, False
        return self.clock.remaining(left), self.clock.remaining(left | later, final_eval, known_only=True), True

    # -- phases ----------------------------------------------------------------------------------------------------

    def stage_questions(self, name: str, stage: StageConfig) -> QuestionPool:
        """The stage's training questions per file, less those kept for the warm start's demonstrations (disjoint
        sets), drawn by the files' weights when they have them."""
        from medr3.demos import split_warmup

        w, files = self.config.stages.warmup, []
        for spec in stage.train:
            items, report = load_dataset(spec)
            if report.skipped:
                say(f"[data] {report.summary()} (first: {report.skipped[0]})")
            files.append(tuple(split_warmup(items, self.config.run.seed, w.fraction)[1] if w.steps else items))
        weights = tuple(spec.weight for spec in stage.train) if stage.train[0].weight is not None else None
        return QuestionPool(tuple(files), weights)

    def rollout_for(self, name: str, stage: StageConfig, questions: QuestionPool, stage_step: int):
        """This step's trajectories: the prefetched ones in pipelined mode, else generated now."""
        key = (name, stage_step)
        if self.prefetch and self.prefetch[0] == key:
            _, future = self.prefetch
            self.prefetch = None
            return future.result()
        return self.generate(name, stage, questions, stage_step)

    def maybe_prefetch(self, name: str, stage: StageConfig, questions: QuestionPool) -> None:
        """Pipelined mode: start the next step's rollout now; it overlaps training (one step off-policy, corrected
        by the importance ratio against the generator's logprobs)."""
        nxt = self.pos["stage_step"] + 1
        if self.config.grpo.pipelined and nxt < stage.steps:
            self.prefetch = ((name, nxt), self.pool.submit(self.generate, name, stage, questions, nxt))

    def generate(self, name: str, stage: StageConfig, questions: QuestionPool, stage_step: int):
        from medr3.rollout import Rollout, RolloutSettings

        g = self.config.grpo
        batch = questions.batch(name, stage_step, g.prompts_per_step, self.config.run.seed)
        spent, search_fn = [0.0], self.search_fn()

        def search(queries: list[str]) -> list[list[dict]]:
            start = time.perf_counter()
            try:
                return search_fn(queries)
            finally:
                spent[0] += time.perf_counter() - start

        rollout = Rollout(
            self.tokenizer,
            lambda reqs: self.generators.generate(reqs, g.temperature, g.top_p),
            search if search_fn else None,
            RolloutSettings.from_config(self.config),
        )
        step_index = STAGE_NAMES.index(name) * 1_000_000 + stage_step  # distinct, reproducible sampling seeds
        trajs = rollout.run(batch, g.samples_per_prompt, search=stage.retrieval, step=step_index)
        return trajs, spent[0]

    def sync(self) -> None:
        """Learner rank 0 → every generator, through the object store (one put, N reads), version-stamped."""
        self.pos["version"] += 1
        self.push_weights(self.pos["version"])

    def maybe_checkpoint(self, stage_name: str, stage_end: bool) -> None:
        """Every `run.checkpoint_every` steps, and always at a stage's end."""
        if stage_end or self.pos["global_step"] % self.config.run.checkpoint_every == 0:
            with self.timer("checkpoint"):
                self.checkpoint(stage_name)

    def checkpoint(self, stage_name: str) -> None:
        """The learner snapshots its state and writes it in the background while training goes on; the folder is
        committed (renamed into place) only once every rank has written its part, so a kill meanwhile leaves the
        last one valid. The job's end waits for the last write."""
        self.commit_checkpoint(wait=True)
        tmp = self.ckpts.begin()
        (tmp / "config.yaml").write_text(self.config_text, encoding="utf-8")  # what serve/app.py serves it with
        self.learner.save(str(tmp / "ds"), export_hf=str(tmp / "hf"))
        self.pending_checkpoint = (tmp, self.pos["global_step"], {**self.pos, "stage": stage_name})

    def commit_checkpoint(self, wait: bool) -> None:
        if self.pending_checkpoint and self.learner.save_done(wait):
            tmp, step, meta = self.pending_checkpoint
            self.ckpts.commit(tmp, step, meta)
            self.pending_checkpoint = None

    def search_fn(self):
        """Batched search over the job's SearchPool (None when the run never searches)."""
        if self.search is None:
            return None
        return lambda queries: self.search.batch_search(queries, k=self.config.retriever.top_k)

    def wants_warmup_eval(self) -> bool:
        """`run.warmup_eval` applies (a warm start, a before/after) and its result is not written yet."""
        run, warmup = self.config.run, self.config.stages.warmup
        return run.final_eval and run.warmup_eval and warmup.steps > 0 and not self.evaluated("warmup")

    def evaluated(self, key: str) -> bool:
        path = self.out / "final_eval.json"
        return path.exists() and key in json.loads(path.read_text(encoding="utf-8"))

    def final_eval(self, key: str) -> None:
        """`key` = base, warmup or final: the generators' current model on the fixed slice, same seeds for all. The
        base model's results are reused from `run.base_eval_cache` when an earlier run had the same model and
        settings."""
        from medr3.evaluation import eval_tasks
        from medr3.final_eval import chance_level, evaluate_cached, markdown, write_result, write_samples
        from medr3.rollout import Rollout, RolloutSettings

        run = self.config.run
        available = eval_tasks(Path(os.environ.get("MEDR3_ROOT") or Path.cwd()) / "data")
        tasks = [available[name] for name in run.final_eval_tasks]
        settings = RolloutSettings.from_config(self.config)
        rollout = Rollout(
            self.tokenizer,
            lambda reqs: self.generators.generate(reqs, EVAL_TEMPERATURE, EVAL_TOP_P),
            self.search_fn(),
            settings,
        )
        cache = self.base_cache(tasks, settings) if key == "base" else None
        if cache is None or not cache.exists():  # minutes of generation: say so, or the console looks stuck
            expect = f"; the last evaluation took {max(1, round(self.eval_s / 60))} min" if self.eval_s else ""
            say(
                f"[eval] {key}: {run.final_eval_limit} questions of {', '.join(t.name for t in tasks)}, "
                f"without and with search{expect} …"
            )
        result = evaluate_cached(tasks, run.final_eval_limit, lambda qs, s: rollout.run(qs, 1, search=s), cache)
        write_samples(self.out / "final_eval_samples.jsonl", key, result.samples)
        data = write_result(
            self.out / "final_eval.json", key, result.per_question, chance_level(tasks, run.final_eval_limit)
        )
        averages = ", ".join(f"{mode} {data[key][mode]['average']:.1f}%" for mode in data[key])
        self.eval_s = result.seconds  # the next evaluation's ETA: as long as this one took
        origin = f"reused from {result.reused.name}" if result.reused else f"{result.seconds:.0f}s"
        say(f"[eval] {key}: {averages} ({origin})")
        if key == "final":
            say(markdown(data))

    def base_cache(self, tasks: list, settings) -> Path | None:
        """The cache file of the base model's results under this run's settings (None: caching off)."""
        from dataclasses import asdict

        from medr3.evaluation import SLICE_SEED
        from medr3.final_eval import base_fingerprint
        from medr3.hardware import resolve_model_dtype
        from medr3.protocol import instruction

        c = self.config
        if c.run.base_eval_cache is None:
            return None
        manifest = Path(c.retriever.index_path) / "manifest.json"
        fingerprint = {
            "rollout": asdict(settings),
            "sampling": [EVAL_TEMPERATURE, EVAL_TOP_P],
            "dtype": resolve_model_dtype(c.model.dtype),
            "tokenizer": Path(c.model.tokenizer_path).name,
            "slice": [[t.name, Path(t.spec.path).name] for t in tasks] + [c.run.final_eval_limit, SLICE_SEED],
            "retriever": c.retriever.model_dump(
                mode="json", exclude={"num_cpus", "num_gpus", "replicas", "threads", "resources"}
            ),
            "index": manifest.read_text(encoding="utf-8") if manifest.exists() else None,
            "prompts": [instruction(False), instruction(True, settings.max_searches)],
        }
        return Path(c.run.base_eval_cache) / f"base-{base_fingerprint(c.model.path, fingerprint)}.json"

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.commit_checkpoint(wait=True)
        self.log.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run config (see configs/).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a config key.")
    parser.add_argument("--fresh", action="store_true", help="Ignore existing checkpoints in the output directory.")
    parser.add_argument("--verbose", action="store_true", help="Show engine and library logs live on the console.")
    return parser.parse_args(argv)


def stage_steps(config: Config) -> dict[str, int]:
    """Steps of each stage, the warm start first."""
    return {WARMUP: config.stages.warmup.steps} | {name: stage.steps for name, stage in config.stages.ordered()}


def header(config: Config, args: argparse.Namespace) -> str:
    """What the job runs, on what, and where it writes: the console's first lines."""
    import ray

    from medr3.console import short_path
    from medr3.hardware import resolve_model_dtype, resolve_precision

    resources = ray.cluster_resources()
    nodes = sum(node["Alive"] for node in ray.nodes())
    g, out = config.grpo, Path(config.run.output_dir)
    overrides = f" with {len(args.set)} --set" if args.set else ""
    stages = " → ".join(f"{name} {n}" for name, n in stage_steps(config).items() if n)
    evaluation = ", before/after evaluation" if config.run.final_eval else ""
    return "\n".join(
        [
            f"Med-R³ progressive job: {short_path(args.config)}{overrides}",
            f"  model    {short_path(config.model.path)} (generator {resolve_model_dtype(config.model.dtype)}, "
            f"learner {resolve_precision(config.learner.precision)}, {config.learner.replicas} rank(s) "
            f"ZeRO-{config.learner.zero_stage})",
            f"  stages   {stages} steps; {g.prompts_per_step} prompts × {g.samples_per_prompt} samples{evaluation}",
            f"  cluster  {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU on {nodes} node(s)",
            f"  output   {short_path(out)} (config.yaml, metrics.jsonl, checkpoints/, "
            + ("logs/)" if args.verbose else "logs/: engine and library logs, --verbose shows them live)"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.set)
    except ConfigError as err:
        say(f"error: {err}", err=True)
        return 2
    missing = missing_paths(config)
    if missing:
        say("error: inputs missing (run ./setup.sh to build models and index):\n  " + "\n  ".join(missing), err=True)
        return 2
    try:
        if needs_search(config):
            check_index(config.retriever)  # before any actor starts, for the server backend too
    except IndexNotReadyError as err:
        say(f"error: {err}", err=True)
        return 2
    from actors.cluster import init_ray

    logs = Path(config.run.output_dir) / "logs"
    log_file = send_logs_to(logs, "driver", args.verbose)
    trainer = None
    try:
        init_ray(logs, args.verbose)
        say(header(config, args))
        trainer = ProgressiveTrainer(config, fresh=args.fresh)
        trainer.run()
    except Exception as err:  # an actor that cannot start (missing index, unreachable Qdrant URL, ...), a crash
        log.exception("the job failed")
        say(f"error: {err}\n  (traceback in {log_file}; the actors' logs are beside it)", err=True)
        return 1
    finally:
        if trainer:
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
