"""Evaluation: scoring over samples on known answers (pure), resumable partial results, and the tiny model through
pipelines/evaluate.py on a small slice of every task, as users run it."""

import json
import os
import subprocess
import sys
import time

import pytest

from medr3.config import load_config
from medr3.data import DataError, Question
from medr3.evaluation import (
    ORACLE_CAVEAT,
    EvaluationError,
    PartialResults,
    average,
    build_report,
    eval_tasks,
    evaluate_task,
    load_task,
    majority_vote,
    markdown,
    question_record,
    summarize,
)
from medr3.rollout import Trajectory
from pipelines import evaluate

from .conftest import ROOT

OPTIONS = {"A": "Iron deficiency", "B": "Vitamin B12 deficiency", "C": "Thalassemia"}


def question(qid: str, gold: str) -> Question:
    return Question(qid, f"Question {qid}?", OPTIONS, gold, OPTIONS[gold])


def traj(q: Question, sample: int, answer: str | None, searches: int = 0) -> Trajectory:
    """A well-formed response answering `answer` (None: a response with no answer at all, a format error)."""
    body = "<search>anemia</search>\n<document>(1) x</document>\n" * searches
    text = f"reasoning {body}</think><answer>{answer}</answer>" if answer else "reasoning that never ends"
    fake_searches = [{"query": "anemia", "doc_ids": ["x"], "documents": []}] * searches
    return Trajectory(q, sample, [], text=text, searches=fake_searches, search_allowed=True)


def records_of(*answers_by_question: tuple[Question, list]) -> list[dict]:
    return [question_record([traj(q, i, a) for i, a in enumerate(ans)]) for q, ans in answers_by_question]


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_the_earliest_sample():
    assert majority_vote(["B", None, "A", "A"]) == "A"
    assert majority_vote([None, "C", "B", "B", "C"]) == "C"  # 2 vs 2: C was said first
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_accuracy_by_majority_vote_and_by_mean_on_known_answers():
    q1, q2, q3, q4 = question("1", "A"), question("2", "C"), question("3", "B"), question("4", "B")
    records = records_of(
        (q1, ["A", "A. Iron deficiency", "B"]),  # letters and option texts both count: majority A (right), mean 2/3
        (q2, ["B", None, "Thalassemia"]),  # tie B/C, B said first: majority wrong; mean 1/3
        (q3, [None, None, None]),  # never answered: wrong either way, and ill-formed
        (q4, ["the answer is B", "B", "C"]),  # majority B (right), mean 2/3
    )
    assert [r["answers"] for r in records][:2] == [["A", "A", "B"], ["B", None, "C"]]
    majority, mean = summarize(records, "majority"), summarize(records, "mean")
    assert majority["n"] == mean["n"] == 4
    assert majority["accuracy"] == pytest.approx(2 / 4)
    assert mean["accuracy"] == pytest.approx((2 / 3 + 1 / 3 + 0 + 2 / 3) / 4)
    assert majority["format_rate"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert majority["searches_per_question"] == 0.0


def test_an_open_question_is_scored_by_its_answer_text_and_never_right_without_an_answer():
    q = Question("o", "What prevents scurvy?", {}, None, "Vitamin C")
    silent = question_record([traj(q, 0, None), traj(q, 1, None)])
    answered = question_record([traj(q, 0, "vitamin C."), traj(q, 1, "Iron"), traj(q, 2, "Iron")])
    assert summarize([silent], "majority")["accuracy"] == summarize([silent], "mean")["accuracy"] == 0.0
    assert summarize([answered], "majority")["accuracy"] == 0.0  # the majority said iron
    assert summarize([answered], "mean")["accuracy"] == pytest.approx(1 / 3)


def test_training_accuracy_counts_the_same_answers_correct_as_evaluation():
    from medr3.experience import rollout_metrics

    mcq, open_q = question("1", "A"), Question("o", "What prevents scurvy?", {}, None, "Vitamin C")
    groups = [[traj(mcq, 0, "A. Iron deficiency"), traj(mcq, 1, "Iron deficiency or thalassemia")],
              [traj(open_q, 0, None), traj(open_q, 1, "vitamin C.")]]  # fmt: skip
    evaluated = summarize([question_record(g) for g in groups], "mean")["accuracy"]
    assert rollout_metrics([t for g in groups for t in g])["rollout/accuracy"] == evaluated == 0.5
    assert rollout_metrics(groups[0][1:])["rollout/accuracy"] == 0.0  # naming two options is wrong


def test_searches_per_question_is_the_mean_over_samples_and_the_average_is_per_task():
    q = question("1", "A")
    rec = question_record([traj(q, 0, "A", searches=2), traj(q, 1, "B", searches=1)])
    assert rec["format"] == [True, True] and rec["searches"] == [2, 1]
    task_a = summarize([rec], "mean")
    assert task_a["searches_per_question"] == 1.5 and task_a["accuracy"] == 0.5
    task_b = {"n": 10, "accuracy": 1.0, "format_rate": 1.0, "searches_per_question": 0.5}
    avg = average([task_a, task_b, summarize([], "mean")])  # an empty task does not count
    assert avg == {"n": 11, "accuracy": 0.75, "format_rate": 1.0, "searches_per_question": 1.0}


def test_report_tables_mark_oracle_pool_tasks_only_with_retrieval_over_their_sources():
    tasks = eval_tasks(ROOT / "data")
    rec = records_of((question("1", "A"), ["A", "B"]))
    records = {"cot": {"medqa": rec, "bioasq": rec}, "rag": {"medqa": rec, "bioasq": rec}}
    settings = {"model": "m", "n": 2, "aggregate": "mean", "temperature": 0.6, "top_p": 0.9,
                "max_response_tokens": 64, "retriever_sources": None}  # fmt: skip
    report = build_report(records, tasks, settings)
    assert report["oracle_caveat"] == ORACLE_CAVEAT
    assert report["modes"]["rag"]["tasks"]["bioasq"]["accuracy"] == 0.5
    table = markdown(report)
    assert "| BioASQ-Y/N † | 1 | 50.0 | 100.0 | 0.00 |" in table and "| BioASQ-Y/N | 1 |" in table  # cot: no mark
    assert table.count("| **average** |") == 2 and "Leakage warning" in table
    fair = build_report(records, tasks, {**settings, "retriever_sources": ["medquad"]})
    assert fair["oracle_caveat"] is None and "†" not in markdown(fair)


def test_every_task_loads_with_gold_letters():
    tasks = eval_tasks(ROOT / "data")
    assert list(tasks) == ["medqa", "medmcqa", "pubmedqa", "bioasq", "mmlu", "headqa_dev", "pubmedqa_nontest"]
    for task in tasks.values():
        questions = load_task(task, limit=2)
        assert len(questions) == 2 and all(q.answer_letter in q.options for q in questions), task.name


def test_a_rerun_skips_recorded_questions_and_refuses_other_settings(tmp_path):
    questions = [question(str(i), "A") for i in range(5)]
    calls = []

    def run_chunk(chunk, search):
        calls.append(([q.id for q in chunk], search))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed mid-task, after the first chunk was saved
        return [traj(q, s, "A") for q in chunk for s in range(2)]

    settings = {"model": "m", "n": 2}
    with pytest.raises(KeyboardInterrupt):
        evaluate_task("rag", "medqa", questions, run_chunk, PartialResults(tmp_path / "p.json", settings), 2)
    assert calls == [(["0", "1"], True), (["2", "3"], True)]
    calls.clear()
    resumed = PartialResults(tmp_path / "p.json", settings)
    rows = evaluate_task("rag", "medqa", questions, run_chunk, resumed, 3)
    assert calls == [(["2", "3", "4"], True)]  # only what was not saved
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"] and all(r["answers"] == ["A", "A"] for r in rows)
    assert [r["id"] for r in resumed.records("rag", "medqa", questions[:2])] == ["0", "1"]  # a smaller --limit
    with pytest.raises(EvaluationError, match="other settings \\(n\\)"):
        PartialResults(tmp_path / "p.json", {"model": "m", "n": 4})
    assert PartialResults(tmp_path / "p.json", {"model": "m", "n": 4}, fresh=True).done("rag", "medqa") == {}
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary files left behind


needs_index = pytest.mark.skipif(not (ROOT / "artifacts/index/default/manifest.json").exists(),
                                 reason="the corpus index is built by ./setup.sh")  # fmt: skip


@pytest.mark.slow
@needs_index
def test_tiny_model_evaluation_writes_a_well_formed_report_and_a_rerun_resumes(ray_cluster, tiny_model_dir, tmp_path):
    args = [sys.executable, str(ROOT / "pipelines/evaluate.py"), "--config", str(ROOT / "configs/tiny.yaml"),
            "--model", str(tiny_model_dir), "--out", str(tmp_path), "--limit", "2", "--n", "2",
            "--chunk-size", "2"]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "MEDR3_ROOT": str(ROOT)}
    result = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["n"] == 2 and report["settings"]["temperature"] == 0.6
    assert set(report["modes"]) == {"cot", "rag"}
    for mode, block in report["modes"].items():
        assert len(block["tasks"]) == 7 and block["average"]["n"] == 14
        for row in [*block["tasks"].values(), block["average"]]:
            assert 0 <= row["accuracy"] <= 1 and 0 <= row["format_rate"] <= 1 and row["searches_per_question"] >= 0
        if mode == "cot":
            assert all(row["searches_per_question"] == 0 for row in block["tasks"].values())
    table = (tmp_path / "report.md").read_text()
    assert "| MedQA-US | 2 |" in table and "| PubMedQA* † | 2 |" in table and "| HEAD-QA dev | 2 |" in table
    assert "[caveat] Oracle pool" in result.stdout and "eval:" in result.stderr  # the tqdm bar
    started = time.monotonic()
    again = subprocess.run(args, env={**env, "RAY_ADDRESS": ""}, capture_output=True, text=True, cwd=ROOT,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0 and "already recorded" in again.stdout, again.stderr[-2000:]
    assert json.loads((tmp_path / "report.json").read_text()) == report and time.monotonic() - started < 60


def test_a_limited_slice_is_a_fixed_sample_spread_over_the_task_not_its_first_questions():
    pubmedqa = eval_tasks(ROOT / "data")["pubmedqa"]
    first, again = load_task(pubmedqa, limit=64), load_task(pubmedqa, limit=64)
    assert [q.id for q in first] == [q.id for q in again]  # base and final see the same questions
    # MIRAGE sorts PubMedQA* by answer: its first 276 are all "yes"; a fair slice holds every answer
    assert {q.answer_letter for q in first} == {"A", "B", "C"}


def test_a_users_files_are_tasks_by_stem_or_by_the_mirage_tasks_inside(tmp_path):
    from medr3.evaluation import dataset_tasks

    (tmp_path / "ward.jsonl.xz").write_bytes(b"")
    (tmp_path / "exam.json").write_text(json.dumps([{"id": 1, "question": "Q?", "answer": "yes"}]))
    (tmp_path / "hospital.json").write_text(json.dumps({"cardiology": {}, "medqa": {}}))
    assert {n: t.spec.kind for n, t in dataset_tasks(tmp_path / "ward.jsonl.xz").items()} == {"ward": "jsonl"}
    assert {n: t.spec.kind for n, t in dataset_tasks(tmp_path / "exam.json").items()} == {"exam": "json"}
    mirage = dataset_tasks(tmp_path / "hospital.json")
    assert list(mirage) == ["medqa", "cardiology"] and mirage["cardiology"].spec.tasks == ["cardiology"]
    with pytest.raises(DataError, match="must be .jsonl or .json"):
        dataset_tasks(tmp_path / "notes.csv")
    with pytest.raises(DataError, match="file not found"):
        dataset_tasks(tmp_path / "missing.jsonl")


def test_dataset_files_replace_the_bundled_tasks_unless_tasks_names_them(tmp_path):
    (tmp_path / "ward.jsonl").write_text(json.dumps({"id": 1, "question": "Q?", "answer": "yes"}) + "\n")
    args = evaluate.parse_args(["--dataset", str(tmp_path / "ward.jsonl")])
    assert [t.name for t in evaluate.select_tasks(args, ROOT / "data")] == ["ward"]
    args = evaluate.parse_args(["--dataset", str(tmp_path / "ward.jsonl"), "--tasks", "ward", "mmlu"])
    assert [t.name for t in evaluate.select_tasks(args, ROOT / "data")] == ["ward", "mmlu"]
    assert len(evaluate.select_tasks(evaluate.parse_args([]), ROOT / "data")) == 7
    twice = evaluate.parse_args(["--dataset", str(tmp_path / "ward.jsonl")] * 2)
    with pytest.raises(ValueError, match="task 'ward' is in both"):
        evaluate.select_tasks(twice, ROOT / "data")


def test_models_are_labelled_by_the_fewest_path_parts_that_tell_them_apart():
    labels = evaluate.model_labels
    assert labels(["/r/a/checkpoints/step-000009/hf", "/r/a/checkpoints/step-000040/hf"]) == [
        "step-000009",
        "step-000040",
    ]
    assert labels(["/artifacts/models/smollm2", "/runs/x/checkpoints/step-1/hf"]) == ["smollm2", "step-1"]
    assert labels(["/runs/a/step-1/hf", "/runs/b/step-1/hf"]) == ["a-step-1", "b-step-1"]
    with pytest.raises(ValueError, match="the same model given twice"):
        labels(["/m/x", "/m/x"])


def test_two_models_on_a_users_mirage_layout_and_open_question_files_make_one_comparison_report(tmp_path, monkeypatch):
    """pipelines/evaluate.py as a user runs it, `--dataset` twice and `--model` twice, on results already recorded
    (so no engine starts): an open-question file scored on its text and a MIRAGE-layout file outside data/."""
    monkeypatch.setenv("MEDR3_ROOT", str(ROOT))
    elsewhere = tmp_path / "hospital"
    elsewhere.mkdir()
    mcq = {"options": {"A": "Epinephrine", "B": "Atropine"}, "answer": "A"}
    (elsewhere / "exam.json").write_text(json.dumps({
        "cardiology": {f"c{i}": {"question": f"Cardiology {i}?", **mcq} for i in range(4)},
        "oncology": {f"o{i}": {"question": f"Oncology {i}?", **mcq} for i in range(2)},
    }))  # fmt: skip
    open_questions = [("What causes tuberculosis?", "Mycobacterium tuberculosis"),
                      ("Which vitamin prevents scurvy?", "Vitamin C")]  # fmt: skip
    (tmp_path / "ward.jsonl").write_text(
        "".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, (q, a) in enumerate(open_questions))
        + '{"id": 9, "question": "No answer?"}\n'
    )
    models = []
    for name in ("base", "tuned"):
        models.append(tmp_path / "models" / name)
        models[-1].mkdir(parents=True)
        (models[-1] / "config.json").write_text("{}")
        (models[-1] / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "out"
    argv = ["--config", str(ROOT / "configs/tiny.yaml"), "--modes", "cot", "--dataset", str(elsewhere / "exam.json"),
            "--dataset", str(tmp_path / "ward.jsonl"), "--model", str(models[0]), "--model", str(models[1]),
            "--out", str(out)]  # fmt: skip

    # What each model answered: the base model gets 2/4 cardiology, 1/2 oncology and no open question right; the
    # tuned one 4/4, 1/2 and both open questions (in other words than the gold text).
    said = {
        "base": {"cardiology": "AABB", "oncology": "AB", "ward": ["a virus", "Vitamin D"]},
        "tuned": {"cardiology": "AAAA", "oncology": "BA", "ward": ["mycobacterium tuberculosis.", "vitamin c"]},
    }
    args = evaluate.parse_args(argv)
    tasks = evaluate.select_tasks(args, ROOT / "data")
    assert [t.name for t in tasks] == ["cardiology", "oncology", "ward"]
    for name, model in zip(("base", "tuned"), models, strict=True):
        config = load_config(args.config)
        evaluate.use_model(config, str(model))
        results = {}
        for t in tasks:
            questions = load_task(t)
            trajs = [traj(q, 0, a) for q, a in zip(questions, said[name][t.name], strict=True)]
            results[t.name] = {r["id"]: r for r in (question_record([x]) for x in trajs)}
        partial = {"settings": evaluate.settings_of(args, config, tasks), "results": {"cot": results}}
        (out / name).mkdir(parents=True)
        (out / name / "partial.json").write_text(json.dumps(partial))

    result = subprocess.run([sys.executable, str(ROOT / "pipelines/evaluate.py"), *argv], capture_output=True,
                            text=True, cwd=ROOT, timeout=300, env={**os.environ, "MEDR3_ROOT": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert result.stdout.count("already recorded") == 2
    assert "[data] ward: " in result.stdout and "2 loaded, 1 skipped (first: line 3: field 'answer'" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == {"base": str(models[0]), "tuned": str(models[1])} and report["baseline"] == "base"
    rows = report["modes"]["cot"]["models"]
    assert rows["base"]["tasks"] == {"cardiology": 50.0, "oncology": 50.0, "ward": 0.0}
    assert rows["tuned"]["tasks"] == {"cardiology": 100.0, "oncology": 50.0, "ward": 100.0}
    assert rows["base"]["average"] == pytest.approx(100 / 3) and rows["tuned"]["average"] == pytest.approx(250 / 3)
    assert rows["tuned"]["difference"] == pytest.approx(50.0)
    assert rows["tuned"]["difference_interval"][0] > 0  # every resample of these questions favours the tuned model
    assert "| tuned | 100.0 | 50.0 | 100.0 | 83.3 [" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 0 and "| tuned | 100.0 | 50.0 | 100.0 | 83.3 [" in result.stdout
    for name in ("base", "tuned"):  # each model's own report, as a single-model run writes it
        own = json.loads((out / name / "report.json").read_text())
        assert list(own["modes"]["cot"]["tasks"]) == ["cardiology", "oncology", "ward"]
        assert own["settings"]["datasets"]["ward"] == str(tmp_path / "ward.jsonl")
    # One model alone, no --out: its report goes to runs/eval/<model folder> under MEDR3_ROOT, as before.
    single = argv[: argv.index("--model")] + ["--model", str(models[1])]
    (tmp_path / "runs/eval/tuned").mkdir(parents=True)
    (tmp_path / "runs/eval/tuned/partial.json").write_text((out / "tuned" / "partial.json").read_text())
    env = {**os.environ, "MEDR3_ROOT": str(tmp_path)}
    command = [sys.executable, str(ROOT / "pipelines/evaluate.py"), *single]
    alone = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert alone.returncode == 0 and "already recorded" in alone.stdout, (alone.stdout + alone.stderr)[-4000:]
    own = json.loads((tmp_path / "runs/eval/tuned/report.json").read_text())
    assert own["modes"]["cot"]["tasks"]["ward"]["accuracy"] == 1.0
