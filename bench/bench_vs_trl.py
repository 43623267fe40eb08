"""Our GRPO step vs TRL's `GRPOTrainer`, same shape, same prompts, one run: median seconds per step of each.

    pip install -e ".[bench]"     # TRL
    python bench/bench_vs_trl.py [--model artifacts/models/smollm2-135m-instruct] [--steps 6]
                                 [--prompts 4] [--samples 4] [--max-tokens 128] [--order ours-trl]

Both sides: P prompts × G samples per step (HEAD-QA train questions, our prompt, the same questions at the same
step), at most T response tokens, temperature 1.0, top_p 1.0, no KL, lr 1e-6, one optimizer step per batch of P·G
completions, each side's own CPU precision defaults (reported). Ours is `pipelines/progressive.py` as a subprocess
(reasoning stage only, serial mode; its step time less the stage-end checkpoint); TRL runs in this process with
`transformers.generate`, our answer grading as its reward and no checkpoints, each step timed by a callback.

The median is over steps 2..N (the first includes warm-up). Progress goes to stderr; stdout is one line per side,
then a JSON object as the last line: {"ours_s_per_step", "trl_s_per_step", "ratio" (ours / trl), ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medr3.config import Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
HEADQA = ROOT / "data/train/headqa_en/train_HEAD_EN.json.xz"
STAGE = "reasoning"
LR = 1e-6
# Keys the config may not have yet (or no longer): passed only where `load_config` accepts them.
OPTIONAL_SETS = ("stages.warmup.steps=0", "run.final_eval=false")


def our_config(args: argparse.Namespace, out_dir: Path) -> tuple[list[str], Config]:
    """The `--set` overrides of our run and the config they give; optional keys only where the config has them."""
    from medr3.config import ConfigError, load_config

    sets = [
        f"run.output_dir={out_dir}",
        f"run.checkpoint_every={args.steps + 1}",  # only the stage-end checkpoint, whose time is left out
        f"model.path={args.model}",
        f"grpo.prompts_per_step={args.prompts}",
        f"grpo.samples_per_prompt={args.samples}",
        f"grpo.max_response_tokens={args.max_tokens}",
        f"grpo.overlong_buffer={args.max_tokens // 4}",
        "grpo.temperature=1.0",
        "grpo.top_p=1.0",
        f"grpo.lr={LR:.1e}",  # YAML reads 1e-06 (no dot) as a string
        "grpo.kl_coef=0.0",
        "grpo.ppo_epochs=1",
        "grpo.mini_batches=1",
        "grpo.pipelined=false",
        f"stages.{STAGE}.steps={args.steps}",
        f"stages.{STAGE}.retrieval=false",
        f"stages.{STAGE}.train=[{{kind: headqa, path: {HEADQA}}}]",
        "stages.retrieval.steps=0",
        "stages.joint.steps=0",
    ]
    config = load_config(args.config, sets)  # a rejected override is an error here, naming the key
    for optional in OPTIONAL_SETS:
        try:
            config = load_config(args.config, [*sets, optional])
        except ConfigError:  # the config has no such key
            continue
        sets.append(optional)
    return sets, config


def run_ours(args: argparse.Namespace, out_dir: Path) -> dict:
    from medr3.hardware import resolve_model_dtype, resolve_precision

    sets, config = our_config(args, out_dir)
    cmd = [sys.executable, str(ROOT / "pipelines/progressive.py"), "--config", args.config, "--fresh"]
    subprocess.run(cmd + [a for s in sets for a in ("--set", s)], cwd=ROOT, check=True, stdout=sys.stderr)
    with open(out_dir / "metrics.jsonl", encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if r["stage"] == STAGE]
    timed = rows[1:]
    phases = sorted({k for r in timed for k in r if k.startswith("timing/")} - {"timing/step", "timing/checkpoint"})
    return {
        "steps_s": [round(r["timing/step"] - r.get("timing/checkpoint", 0.0), 3) for r in rows],
        "phases": {
            k.removeprefix("timing/"): round(statistics.median(r.get(k, 0.0) for r in timed), 3) for k in phases
        },
        "response_tokens": round(statistics.mean(r.get("rollout/response_tokens", 0.0) for r in timed), 1),
        "precision": {
            "generator": resolve_model_dtype(config.model.dtype),
            "learner": resolve_precision(config.learner.precision),
        },
        "overrides": [s for s in sets if not s.startswith("run.output_dir=")],
    }


def run_trl(args: argparse.Namespace, out_dir: Path, seed: int) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from medr3.data import load_headqa
    from medr3.protocol import build_prompt, parse
    from medr3.rewards.answer import grade_answer
    from medr3.stages import batch_for_step

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    questions, _ = load_headqa(HEADQA)
    # Rows in step order and no shuffling: step k sees the questions our step k sees.
    batches = [batch_for_step(questions, STAGE, k, args.prompts, seed) for k in range(args.steps)]
    rows = [q for batch in batches for q in batch]
    dataset = Dataset.from_list([{"prompt": build_prompt(q, tokenizer), "row": i} for i, q in enumerate(rows)])

    def answer_reward(completions: list[str], row: list[int], **_) -> list[float]:
        return [grade_answer(parse(text).answer, rows[i]) for text, i in zip(completions, row, strict=True)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps, self.lengths, self.start = [], [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self.start)
            print(f"[trl] step {state.global_step}: {self.steps[-1]:.1f}s", file=sys.stderr, flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    config = GRPOConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        seed=seed,
        max_steps=args.steps,
        per_device_train_batch_size=args.prompts * args.samples,
        gradient_accumulation_steps=1,
        num_generations=args.samples,
        max_completion_length=args.max_tokens,
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        shuffle_dataset=False,
        use_vllm=False,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=args.model, reward_funcs=answer_reward, args=config, train_dataset=dataset, callbacks=[timer]
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    # Rollout = generate + reward + advantages, once per step (steps_per_generation 1); train = the rest of the step.
    rollout_s, inner = [], trainer._generate_and_score_completions

    def timed_rollout(*a, **kw):
        start = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            rollout_s.append(time.perf_counter() - start)

    trainer._generate_and_score_completions = timed_rollout
    trainer.train()
    rollout = statistics.median(rollout_s[1:])
    return {
        "steps_s": [round(s, 3) for s in timer.steps],
        "phases": {"rollout": round(rollout, 3), "train": round(statistics.median(timer.steps[1:]) - rollout, 3)},
        "response_tokens": round(statistics.mean(timer.lengths[1:]), 1) if len(timer.lengths) > 1 else None,
        "precision": {
            "weights": str(trainer.model.dtype).removeprefix("torch."),
            "mixed_precision": trainer.accelerator.mixed_precision,
            "gradient_checkpointing": config.gradient_checkpointing,
        },
        "version": trl.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/default.yaml"), help="Our run's base config.")
    parser.add_argument("--model", default=str(ROOT / "artifacts/models/smollm2-135m-instruct"))
    parser.add_argument("--steps", type=int, default=6, help="Steps per side; the median is over steps 2..N.")
    parser.add_argument("--prompts", type=int, default=4, help="Prompts per step.")
    parser.add_argument("--samples", type=int, default=4, help="Samples per prompt (the group size).")
    parser.add_argument("--max-tokens", type=int, default=128, help="Response token limit.")
    parser.add_argument("--order", choices=("ours-trl", "trl-ours"), default="ours-trl")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is left out of the median)")
    if importlib.util.find_spec("trl") is None:
        sys.exit('error: this benchmark needs TRL: pip install -e ".[bench]"')
    args.model, args.config = str(Path(args.model).resolve()), str(Path(args.config).resolve())
    from medr3.config import load_config

    seed = load_config(args.config).run.seed
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.order.split("-"):
            out = Path(tmp) / side
            with contextlib.redirect_stdout(sys.stderr):  # library chatter (DeepSpeed, TRL) stays off stdout
                results[side] = run_ours(args, out) if side == "ours" else run_trl(args, out, seed)
            r = results[side]
            r["s_per_step"] = round(statistics.median(r["steps_s"][1:]), 3)
            print(
                f"{side:4s} median {r['s_per_step']:7.2f} s/step over steps 2..{args.steps}  {r['phases']}  "
                f"response tokens {r['response_tokens']}  {r['precision']}",
                flush=True,
            )
    ours, trl = results["ours"], results["trl"]
    shape = {"model": Path(args.model).name, "prompts": args.prompts, "samples": args.samples}
    summary = {
        "ours_s_per_step": ours["s_per_step"],
        "trl_s_per_step": trl["s_per_step"],
        "ratio": round(ours["s_per_step"] / trl["s_per_step"], 3),
        "shape": shape | {"max_tokens": args.max_tokens, "steps": args.steps, "timed_steps": f"2..{args.steps}"},
        "ours": ours,
        "trl": trl,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
