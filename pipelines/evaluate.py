"""Evaluate a checkpoint or any HF model folder on MIRAGE's five tasks, HEAD-QA dev and PubMedQA non-test, without
retrieval (chain of thought, the no-search prompt) and retrieval-augmented (the Med-R³ protocol), on Ray actors.

    python pipelines/evaluate.py --model runs/default/checkpoints/step-000009/hf [--limit 50] [--n 4 --aggregate mean]
    ray job submit --working-dir . -- python pipelines/evaluate.py --config configs/llama3_8b_8gpu.yaml --model …

Sampling is the release's evaluation setting (temperature 0.6, top-p 0.9); with --n > 1 a question scores by majority
vote over its samples or by the mean of their correctness. Writes `report.json` and `report.md` (per task and
average: accuracy, format rate, searches per question) into --out. Rerunning the same command resumes: questions
already recorded in `partial.json` are skipped, and a finished evaluation only rebuilds its report. Engine and
library logs go to `<out>/logs/` (`--verbose` shows them live instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from medr3.atomic import write_text_atomic  # noqa: E402
from medr3.config import Config, ConfigError, load_config, missing_inputs  # noqa: E402
from medr3.console import console, say, send_logs_to  # noqa: E402
from medr3.evaluation import (  # noqa: E402
    AGGREGATES,
    MODES,
    EvalTask,
    EvaluationError,
    PartialResults,
    build_report,
    eval_tasks,
    evaluate_task,
    load_task,
    markdown,
    pending_chunks,
)
from medr3.retrieval.manifest import IndexNotReadyError, check_index  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/default.yaml"), help="Run config: actors and resources.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a config key.")
    p.add_argument("--model", help="HF model folder to evaluate (a checkpoint's hf/); default: the config's model.")
    p.add_argument("--out", help="Output folder (default: runs/eval/<model folder name>).")
    p.add_argument("--tasks", nargs="+", help="Tasks to evaluate (default: all).")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="cot: no search; rag: ours.")
    p.add_argument("--n", type=int, default=1, help="Samples per question.")
    p.add_argument("--aggregate", choices=AGGREGATES, default="majority", help="Over the n samples of a question.")
    p.add_argument("--temperature", type=float, default=0.6, help="The release's evaluation temperature.")
    p.add_argument("--top-p", type=float, default=0.9, help="The release's evaluation top-p.")
    p.add_argument("--max-response-tokens", type=int, help="Default: the config's grpo.max_response_tokens.")
    p.add_argument("--limit", type=int, help="A fixed seeded sample of N questions per task (same N, same questions).")
    p.add_argument("--chunk-size", type=int, default=64, help="Questions per generation call and per saved chunk.")
    p.add_argument("--data-dir", help="The bundled data folder (default: data/ of the project).")
    p.add_argument("--fresh", action="store_true", help="Discard partial results in --out and start over.")
    p.add_argument("--verbose", action="store_true", help="Show engine and library logs live on the console.")
    args = p.parse_args(argv)
    if args.n < 1 or args.chunk_size < 1 or (args.limit is not None and args.limit < 1):
        p.error("--n, --chunk-size and --limit must be >= 1")
    return args


def settings_of(args: argparse.Namespace, config: Config) -> dict:
    """What the generated samples depend on; partial results from other settings are never reused."""
    return {
        "model": config.model.path,
        "n": args.n,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_response_tokens": args.max_response_tokens or config.grpo.max_response_tokens,
        "max_model_len": config.generator.max_model_len,
        "max_searches": config.rollout.max_searches,
        "max_document_tokens": config.rollout.max_document_tokens,
        "top_k": config.retriever.top_k,
        "retriever_sources": config.retriever.sources,
        "seed": config.run.seed,
    }


def use_model(config: Config, model: str | None) -> None:
    """Point the config at `--model`; its own tokenizer when it ships one (checkpoint hf/ folders do)."""
    if not model:
        return
    path = Path(model).resolve()
    config.model.path = str(path)
    if (path / "tokenizer_config.json").exists():
        config.model.tokenizer = None


def missing_eval_inputs(config: Config, tasks: list[EvalTask], modes: list[str]) -> list[str]:
    """What the evaluation reads and is not there: the model, each task's file, and the index for `rag`."""
    sections = [("model", config.model)] + [("retriever", config.retriever)] * ("rag" in modes)
    sections += [(t.name, t.spec) for t in tasks]
    return [problem for key, section in sections for problem in missing_inputs(section, key)]


class Evaluator:
    """The Ray side: a GeneratorPool and (for rag) a SearchPool behind one `run_chunk` for `evaluate_task`."""

    def __init__(self, config: Config, args: argparse.Namespace, search: bool):
        from transformers import AutoTokenizer

        from actors.generator import GeneratorPool
        from actors.retriever import SearchPool
        from medr3.rollout import Rollout, RolloutSettings

        self.config, self.args = config, args
        self.search = SearchPool(config.retriever) if search else None
        self.generators = GeneratorPool(config)
        self.generators.wait_ready()
        settings = RolloutSettings.from_config(config, args.max_response_tokens)
        self.rollout = Rollout(
            AutoTokenizer.from_pretrained(config.model.tokenizer_path),
            lambda reqs: self.generators.generate(reqs, args.temperature, args.top_p),
            (lambda queries: self.search.batch_search(queries, k=config.retriever.top_k)) if search else None,
            settings,
        )

    def run_chunk(self, questions: list, search: bool) -> list:
        # Sampling seeds derive from the question id and sample index, so chunking and resuming do not change them.
        return self.rollout.run(questions, self.args.n, search=search)

    def close(self) -> None:
        self.generators.shutdown()
        if self.search:
            self.search.shutdown()


def evaluate(
    config: Config, args: argparse.Namespace, tasks: list[EvalTask], partial: PartialResults, logs: Path
) -> dict:
    """Generate what `partial` lacks (starting actors only if something does, their logs in `logs`); returns
    `records[mode][task]`."""
    from tqdm import tqdm

    questions = {t.name: load_task(t, args.limit) for t in tasks}
    todo = sum(
        len(chunk)
        for mode in args.modes
        for t in tasks
        for chunk in pending_chunks(questions[t.name], partial.done(mode, t.name), args.chunk_size)
    )
    if not todo:
        say("[eval] every question is already recorded: rebuilding the report")
        return {m: {t.name: partial.records(m, t.name, questions[t.name]) for t in tasks} for m in args.modes}
    from actors.cluster import init_ray

    init_ray(logs, args.verbose)
    evaluator = Evaluator(config, args, search="rag" in args.modes)
    records: dict[str, dict[str, list[dict]]] = {}
    try:
        with tqdm(total=todo, unit="question", desc="eval", file=console(err=True)) as bar:
            for mode in args.modes:
                for t in tasks:
                    bar.set_postfix_str(f"{mode}/{t.name}")
                    records.setdefault(mode, {})[t.name] = evaluate_task(
                        mode, t.name, questions[t.name], evaluator.run_chunk, partial, args.chunk_size, bar.update
                    )
    finally:
        evaluator.close()
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(os.environ.get("MEDR3_ROOT") or Path.cwd())
    try:
        config = load_config(args.config, args.set)
    except ConfigError as err:
        say(f"error: {err}", err=True)
        return 2
    use_model(config, args.model)
    available = eval_tasks(Path(args.data_dir) if args.data_dir else base / "data")
    unknown = sorted(set(args.tasks or []) - set(available))
    if unknown:
        say(f"error: unknown task(s) {unknown} (known: {list(available)})", err=True)
        return 2
    tasks = [available[name] for name in (args.tasks or available)]
    missing = missing_eval_inputs(config, tasks, args.modes)
    if missing:
        say("error: inputs missing (run ./setup.sh to build models and index):\n  " + "\n  ".join(missing), err=True)
        return 2
    try:
        if "rag" in args.modes:
            check_index(config.retriever)  # before any actor starts, for the server backend too
    except IndexNotReadyError as err:
        say(f"error: {err}", err=True)
        return 2
    out = Path(args.out) if args.out else base / "runs/eval" / Path(config.model.path).name
    settings = settings_of(args, config)
    log_file = send_logs_to(out / "logs", "evaluate", args.verbose)
    try:
        partial = PartialResults(out / "partial.json", settings, fresh=args.fresh)
        records = evaluate(config, args, tasks, partial, out / "logs")
    except Exception as err:  # settings mismatch, an actor that cannot start, a crash
        log.exception("the evaluation failed")
        say(f"error: {err}" + ("" if isinstance(err, EvaluationError) else f"\n  (traceback in {log_file})"), err=True)
        return 1
    report = build_report(records, {t.name: t for t in tasks}, {**settings, "aggregate": args.aggregate})
    table = markdown(report)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1))
    write_text_atomic(out / "report.md", table)
    say(table)
    if report["oracle_caveat"]:
        say(f"[caveat] {report['oracle_caveat']}")
    say(f"[eval] wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
