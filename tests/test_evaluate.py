"""Evaluation: scoring over samples on known answers (pure), resumable partial results, and the tiny model through
pipelines/evaluate.py on a small slice of every task, as users run it."""

import json
import os
import subprocess
import sys
import time

import pytest

from medr3.data import Question
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
