"""Evaluate a checkpoint or any HF model folder on MIRAGE's five tasks, HEAD-QA dev and PubMedQA non-test, or on a
user's question files, without retrieval (chain of thought, the no-search prompt) and retrieval-augmented (the Med-R³
protocol), on Ray actors; several models on the same questions and seeds side by side in one report.

    python pipelines/evaluate.py --model runs/default/checkpoints/step-000009/hf [--limit 50] [--n 4 --aggregate mean]
    python pipelines/evaluate.py --dataset my_questions.jsonl [--dataset exam.json …] --model A --model B
    ray job submit --working-dir . -- python pipelines/evaluate.py --config configs/llama3_8b_8gpu.yaml --model …

Sampling is the release's evaluation setting (temperature 0.6, top-p 0.9); with --n > 1 a question scores by majority
vote over its samples or by the mean of their correctness. Writes `report.json` and `report.md` (per task and
average: accuracy, format rate, searches per question) into --out. `--dataset` evaluates a question file (`jsonl` or
`json`, medr3/data.py; task name = the file's stem, or the tasks inside a file in MIRAGE's layout) instead of the
bundled tasks (`--tasks` may still add bundled ones). With several `--model`s each model's evaluation goes to
`<out>/<model>/` and `<out>/report.{json,md,png}` compare them: per mode each model's accuracy with its 95 %
bootstrap interval and its paired difference against the first model (medr3/comparison.py). Rerunning the same
command resumes: questions already recorded in `partial.json` are skipped, and a finished evaluation only rebuilds
its report. Engine and library logs go to `<out>/logs/` (`--verbose` shows them live instead).
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
from medr3.data import DataError, load_dataset  # noqa: E402
from medr3.evaluation import (  # noqa: E402
    AGGREGATES,
    MODES,
    EvalTask,
    EvaluationError,
    PartialResults,
    build_report,
    dataset_tasks,
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
    p.add_argument(
        "--model",
        action="append",
        help="HF model folder to evaluate (a checkpoint's hf/); default: the config's model. Repeat it to compare "
        "models on the same questions and seeds (the first is the baseline).",
    )
    p.add_argument(
        "--out", help="Output folder (default: runs/eval/<model folder name>, or runs/eval/compare-<A>-vs-<B>)."
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="PATH",
        help="A question file (.jsonl or .json, optionally .gz/.xz) to evaluate; repeatable.",
    )
    p.add_argument(
        "--tasks", nargs="+", help="Tasks to evaluate (default: the --dataset files' tasks, else every bundled one)."
    )
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


def settings_of(args: argparse.Namespace, config: Config, tasks: list[EvalTask] = ()) -> dict:
    """What the generated samples depend on; partial results from other settings are never reused. A user's question
    files are named by path (`datasets`), so another file under the same task name never counts as done."""
    datasets = {t.name: t.spec.path for t in tasks if t.spec.kind in ("jsonl", "json")}
    return ({"datasets": datasets} if datasets else {}) | {
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


def model_labels(paths: list[str]) -> list[str]:
    """Short distinct names for model folders: the fewest trailing path parts that tell them apart, a checkpoint's
    `hf` dropped (`runs/a/checkpoints/step-000040/hf` -> `step-000040`)."""
    parts = [[p for p in Path(path).parts if p != "/"] for path in paths]
    parts = [p[:-1] if len(p) > 1 and p[-1] == "hf" else p for p in parts]
    for k in range(1, max(map(len, parts)) + 1):
        labels = ["-".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise ValueError(f"the same model given twice: {paths}")


def select_tasks(args: argparse.Namespace, data_dir: Path) -> list[EvalTask]:
    """The tasks to evaluate: `--tasks` among the bundled ones and those of the `--dataset` files (a file's task takes
    a bundled task's name over), by default every task of the files, or every bundled task when there is none.
    Raises ValueError (an unknown task, one task name in two files) or DataError (an unreadable file)."""
    mine: dict[str, EvalTask] = {}
    for path in args.dataset:
        for name, task in dataset_tasks(Path(path).resolve()).items():
            if name in mine:
                raise ValueError(f"task {name!r} is in both {mine[name].spec.path} and {task.spec.path}")
            mine[name] = task
    available = eval_tasks(data_dir) | mine
    unknown = [name for name in args.tasks or [] if name not in available]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} (known: {list(available)})")
    return [available[name] for name in args.tasks or list(mine or available)]


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


def check_datasets(tasks: list[EvalTask]) -> None:
    """Read each user's question file once before anything starts: say what was skipped (file, line, why), and raise
    DataError for a task with no readable question."""
    for task in tasks:
        if task.spec.kind in ("jsonl", "json"):
            questions, report = load_dataset(task.spec)
            if report.skipped:
                where, why = report.skipped[0]
                say(f"[data] {task.name}: {report.summary()} (first: {where}: {why})")
            if not questions:
                raise DataError(f"{task.spec.path}: task {task.name!r} has no readable question")


def evaluate_model(
    config: Config, args: argparse.Namespace, tasks: list[EvalTask], out: Path, logs: Path
) -> tuple[dict, dict]:
    """One model's evaluation into `out` (partial.json, report.json, report.md): `(report, records[mode][task])`."""
    settings = settings_of(args, config, tasks)
    partial = PartialResults(out / "partial.json", settings, fresh=args.fresh)
    records = evaluate(config, args, tasks, partial, logs)
    report = build_report(records, {t.name: t for t in tasks}, {**settings, "aggregate": args.aggregate})
    write_text_atomic(out / "report.json", json.dumps(report, indent=1))
    write_text_atomic(out / "report.md", markdown(report))
    return report, records


def write_comparison(out: Path, labels: list[str], configs: list[Config], reports: list[dict], records: list[dict],
                     aggregate: str) -> str:  # fmt: skip
    """`report.json`, `report.md` and `report.png` in `out` comparing the models; returns the Markdown."""
    from medr3.comparison import compare, plot
    from medr3.comparison import markdown as comparison_markdown

    comparison = compare(dict(zip(labels, records, strict=True)), aggregate)
    models = {label: c.model.path for label, c in zip(labels, configs, strict=True)}
    settings = {k: v for k, v in reports[0]["settings"].items() if k != "model"}
    caveat = next((r["oracle_caveat"] for r in reports if r["oracle_caveat"]), None)
    table = comparison_markdown(comparison, models, settings, caveat)
    report = {"settings": settings, "models": models, **comparison, "oracle_caveat": caveat}
    write_text_atomic(out / "report.json", json.dumps(report, indent=1))
    write_text_atomic(out / "report.md", table)
    plot(comparison, out / "report.png")
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(os.environ.get("MEDR3_ROOT") or Path.cwd())
    try:
        config = load_config(args.config, args.set)
    except ConfigError as err:
        say(f"error: {err}", err=True)
        return 2
    configs = []
    for model in args.model or [None]:
        configs.append(config.model_copy(deep=True))
        use_model(configs[-1], model)
    try:
        tasks = select_tasks(args, Path(args.data_dir) if args.data_dir else base / "data")
        check_datasets(tasks)
        labels = model_labels([c.model.path for c in configs])
    except (DataError, ValueError) as err:
        say(f"error: {err}", err=True)
        return 2
    missing = list(dict.fromkeys(p for c in configs for p in missing_eval_inputs(c, tasks, args.modes)))
    if missing:
        say("error: inputs missing (run ./setup.sh to build models and index):\n  " + "\n  ".join(missing), err=True)
        return 2
    try:
        if "rag" in args.modes:
            check_index(config.retriever)  # before any actor starts, for the server backend too
    except IndexNotReadyError as err:
        say(f"error: {err}", err=True)
        return 2
    compare = len(configs) > 1
    if args.out:
        out = Path(args.out)
    else:
        out = base / "runs/eval" / ("compare-" + "-vs-".join(labels) if compare else Path(configs[0].model.path).name)
    outs = [out / label for label in labels] if compare else [out]
    log_file = send_logs_to(out / "logs", "evaluate", args.verbose)
    reports, records = [], []
    try:
        for label, model_config, model_out in zip(labels, configs, outs, strict=True):
            if compare:
                say(f"[eval] {label}: {model_config.model.path}")
            report, by_mode = evaluate_model(model_config, args, tasks, model_out, out / "logs")
            reports.append(report)
            records.append(by_mode)
    except Exception as err:  # settings mismatch, an actor that cannot start, a crash
        log.exception("the evaluation failed")
        say(f"error: {err}" + ("" if isinstance(err, EvaluationError) else f"\n  (traceback in {log_file})"), err=True)
        return 1
    if compare:
        say(write_comparison(out, labels, configs, reports, records, args.aggregate))
        say(f"[eval] wrote {out / 'report.json'}, {out / 'report.md'} and {out / 'report.png'} (each model's own "
            f"report in {out}/<model>/)")  # fmt: skip
        return 0
    say(markdown(reports[0]))
    if reports[0]["oracle_caveat"]:
        say(f"[caveat] {reports[0]['oracle_caveat']}")
    say(f"[eval] wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
