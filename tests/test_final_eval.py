"""The before/after comparison's pure parts: accuracies, intervals, and the files a run leaves."""

import json

import pytest

from medr3.final_eval import bootstrap_interval, markdown, summarize, write_result, write_samples


def test_summary_is_a_macro_mean_in_percent_with_intervals_that_contain_it():
    accuracy, intervals = summarize({"cot": {"mmlu": [1.0, 0.0, 0.0, 0.0], "pubmedqa": [1.0, 1.0, 0.0, 0.0]}})
    assert accuracy["cot"] == {"mmlu": 25.0, "pubmedqa": 50.0, "average": 37.5}
    for task, acc in accuracy["cot"].items():
        low, high = intervals["cot"][task]
        assert low <= acc <= high


def test_an_interval_collapses_when_every_question_agrees_and_narrows_with_more_questions():
    assert bootstrap_interval([[1.0] * 10]) == (100.0, 100.0)
    few, many = bootstrap_interval([[1.0, 0.0] * 5]), bootstrap_interval([[1.0, 0.0] * 200])
    assert few[0] < many[0] <= 50.0 <= many[1] < few[1]


def test_final_is_added_beside_base_and_the_table_shows_the_difference(tmp_path):
    path = tmp_path / "final_eval.json"
    chance = {"mmlu": 25.0}
    write_result(path, "base", {"cot": {"mmlu": [0.0, 0.0, 0.0, 1.0]}}, chance)
    data = write_result(path, "final", {"cot": {"mmlu": [1.0, 1.0, 0.0, 1.0]}}, chance)
    assert json.loads(path.read_text())["base"]["cot"]["mmlu"] == 25.0
    assert data["final"]["cot"]["mmlu"] == 75.0
    assert "| mmlu | 25.0 | 25.0 " in markdown(data) and "+50.0 [" in markdown(data)
    assert "warm start" not in markdown(data)  # no warm-start evaluation: no column for it


def test_a_warm_start_evaluation_splits_the_gain_with_paired_intervals(tmp_path):
    path, chance = tmp_path / "final_eval.json", {"mmlu": 25.0}
    write_result(path, "base", {"cot": {"mmlu": [0.0] * 8}}, chance)
    write_result(path, "warmup", {"cot": {"mmlu": [1.0, 0.0] * 4}}, chance)
    data = write_result(path, "final", {"cot": {"mmlu": [1.0, 0.0] * 4}}, chance)
    row = next(line for line in markdown(data).splitlines() if line.startswith("| mmlu"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3].startswith("50.0 [") and cells[4].startswith("50.0 [")  # warm start, final
    assert cells[5].startswith("+50.0 [") and cells[6] == "+0.0 [+0.0, +0.0]"  # the same answers: no GRPO gain
    # Unpaired, the two 50 % accuracies' intervals overlap widely; paired, every question's difference is 0.
    assert "| Δ since warm start [95 % CI] |" in markdown(data)


def test_samples_of_a_model_are_replaced_not_appended_when_it_is_evaluated_again(tmp_path):
    path = tmp_path / "final_eval_samples.jsonl"
    write_samples(path, "base", [{"id": "q1", "correct": False}])
    write_samples(path, "final", [{"id": "q1", "correct": True}])
    write_samples(path, "final", [{"id": "q1", "correct": False}, {"id": "q2", "correct": True}])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["model"], r["id"], r["correct"]) for r in rows] == [
        ("base", "q1", False),
        ("final", "q1", False),
        ("final", "q2", True),
    ]


@pytest.mark.parametrize("missing", ["base", "final"])
def test_no_table_until_both_models_are_evaluated(missing):
    data = {"base": {"cot": {"mmlu": 1.0}}, "final": {"cot": {"mmlu": 2.0}}, "chance": {"mmlu": 25.0}}
    del data[missing]
    assert markdown(data) == ""


def test_the_base_models_results_are_reused_only_for_the_same_files_and_settings(tmp_path, monkeypatch):
    from medr3.data import Question
    from medr3.evaluation import EvalTask
    from medr3.final_eval import base_fingerprint, evaluate_cached
    from medr3.rollout import Trajectory

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    key = base_fingerprint(model, {"max_response_tokens": 640})
    assert base_fingerprint(model, {"max_response_tokens": 512}) != key
    (model / "model.safetensors").write_bytes(b"weights v2")
    assert base_fingerprint(model, {"max_response_tokens": 640}) != key

    questions = [Question("q1", "Which?", {"A": "x", "B": "y"}, "A", "x", source="test")]
    calls = []

    def run_chunk(qs, search):
        calls.append(search)
        return [
            Trajectory(q, 0, [1], text="<think>t</think><answer>A. x</answer>", finish_reason="answer") for q in qs
        ]

    task, cache = EvalTask("t", "T", None), tmp_path / "cache" / "base-k.json"
    monkeypatch.setattr("medr3.final_eval.load_task", lambda task, limit: questions)  # slices: test_evaluate
    first = evaluate_cached([task], 1, run_chunk, cache)
    again = evaluate_cached([task], 1, run_chunk, cache)
    assert calls == [False, True]  # cot and rag ran once; the second call read the cache
    assert first.reused is None and again.reused == cache
    assert again.per_question == first.per_question == {"cot": {"t": [1.0]}, "rag": {"t": [1.0]}}
    assert again.samples == first.samples and again.seconds == first.seconds


def test_summary_md_puts_the_before_after_heading_on_its_own_paragraph(tmp_path):
    from medr3.report import write_report

    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"global_step": 1, "stage": "reasoning", "stage_step": 1, "reward/total": 0.5, "timing/step": 2.0})
        + "\n"
    )
    write_result(tmp_path / "final_eval.json", "base", {"cot": {"mmlu": [0.0, 1.0]}}, {"mmlu": 25.0})
    write_result(tmp_path / "final_eval.json", "final", {"cot": {"mmlu": [1.0, 1.0]}}, {"mmlu": 25.0})
    summary = write_report(tmp_path)[1].read_text()
    assert "min of step time.\n\n## Before / after" in summary
