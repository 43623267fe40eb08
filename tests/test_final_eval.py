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
    assert "| mmlu | 25.0 | 25.0 " in markdown(data) and "+50.0 |" in markdown(data)


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
