"""`ProgressiveTrainer.run()` on fake workers (tests/fakes.py), no Ray and no vLLM: the stage order, a gate that ends a
stage early, checkpoints at stage ends, and a resume that continues where a killed run stopped. The subprocess tests
in test_pipeline.py run the same loop on real actors."""

from __future__ import annotations

import dataclasses
import json
import sys
from types import SimpleNamespace

import pytest

from medr3.config import load_config
from medr3.retrieval.manifest import Manifest
from pipelines import evaluate, progressive
from pipelines.progressive import ProgressiveTrainer

from .conftest import ROOT
from .fakes import FakeLearner, fake_workers

# The reasoning stage may run 4 steps, but every fake response is well formed, so its gate fires after 2.
STAGES = [
    "stages.warmup.steps=0",
    "stages.reasoning.steps=4",
    "stages.reasoning.gate={metric: rollout/format_rate, threshold: 1.0, patience: 2}",
    "stages.retrieval.steps=2",
    "stages.joint.steps=1",
    *(f"stages.{name}.reward={{gain: {{answer: 1.0}}, penalty: {{format: 0.1}}}}" for name in progressive.STAGE_NAMES),
]
EXPECTED = [("reasoning", 1), ("reasoning", 2), ("retrieval", 1), ("retrieval", 2), ("joint", 1)]


@pytest.fixture
def config_for(tiny_model_dir):
    def make(out_dir, *extra):
        sets = [f"model.path={tiny_model_dir}", f"run.output_dir={out_dir}", "run.final_eval=false"]
        return load_config(ROOT / "configs/tiny.yaml", [*sets, "run.checkpoint_every=1", *STAGES, *extra])

    return make


def run(config, tokenizer, learner=None) -> dict:
    workers = fake_workers(config, tokenizer, learner)
    trainer = ProgressiveTrainer(config, workers=workers)
    try:
        trainer.run()
    finally:
        trainer.close()  # as main() does, also when a step raises
    return workers


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_gate_ends_a_stage_early_and_every_stage_end_is_checkpointed(tmp_path, config_for, tiny_tokenizer):
    workers = run(config_for(tmp_path), tiny_tokenizer)
    rows = lines(tmp_path / "metrics.jsonl")
    assert [(r["stage"], r["stage_step"]) for r in rows] == EXPECTED
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5] and workers.learner.steps == 5
    assert [r["weights_version"] for r in rows] == [1, 2, 3, 4, 5] and workers.generators.version == 5
    assert all(r["rollout/format_rate"] == 1.0 and "reward/total" in r and "timing/train" in r for r in rows)
    # one mean reward per prompt (configs/tiny.yaml: 2 a step), whose mean is the step's: summary.md's interval
    assert all(len(r["reward/group_means"]) == 2 for r in rows)
    assert all(sum(r["reward/group_means"]) / 2 == pytest.approx(r["reward/total"]) for r in rows)
    assert [r["rollout/searches_per_traj"] for r in rows] == [0, 0, 1, 1, 1]  # the reasoning stage never searches
    assert len(workers.ray_metrics.records) == 5
    last = json.loads(sorted((tmp_path / "checkpoints").glob("step-*"))[-1].joinpath("meta.json").read_text())
    assert last["global_step"] == 5 and last["stage_index"] == 4  # past the last stage: a rerun has nothing to do
    assert (tmp_path / "summary.md").exists()


def test_tied_groups_leave_the_weights_alone_when_skipped_and_train_otherwise(tmp_path, config_for, tiny_tokenizer):
    # The fake generator writes the same response to every prompt: each group's four rewards are equal.
    workers = run(config_for(tmp_path / "skip", "grpo.skip_uniform_groups=true"), tiny_tokenizer)
    rows = lines(tmp_path / "skip" / "metrics.jsonl")
    assert [(r["stage"], r["stage_step"]) for r in rows] == EXPECTED
    assert all(r["train/uniform_groups"] == 1.0 and r["train/samples"] == 0 for r in rows)
    assert workers.learner.steps == 0 and workers.generators.version == 0  # no update, nothing pushed
    assert all("timing/train" not in r and "train/loss" not in r for r in rows)

    workers = run(config_for(tmp_path / "all"), tiny_tokenizer)  # the release's way: every group trains
    rows = lines(tmp_path / "all" / "metrics.jsonl")
    assert all(r["train/uniform_groups"] == 1.0 and r["train/samples"] == 8 for r in rows)
    assert workers.learner.steps == 5


def test_a_warm_start_evaluation_runs_once_between_the_warm_start_and_the_first_grpo_step(
    tmp_path, config_for, tiny_tokenizer, capsys
):
    sets = ["stages.warmup.steps=2", "run.final_eval=true", "run.warmup_eval=true", "run.base_eval_cache=null"]
    run(config_for(tmp_path, *sets), tiny_tokenizer)
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    started = [line.split()[1] for line in out if line.startswith("[eval]") and line.endswith("…")]
    assert started == ["base:", "warmup:", "final:"]  # minutes of generation each: announced, not silent
    out = [line for line in out if not line.endswith("…")]
    order = [line.split()[0] + (line.split()[1] if line.startswith("[eval]") else "") for line in out]
    first_grpo = order.index("[reasoning")
    assert order.index("[eval]base:") < order.index("[warmup") < order.index("[eval]warmup:") < first_grpo
    assert order.index("[eval]final:") > first_grpo and order.count("[eval]warmup:") == 1
    result = json.loads((tmp_path / "final_eval.json").read_text())
    assert {"base", "warmup", "final"} <= set(result) and set(result["warmup"]) == {"cot", "rag"}
    samples = [json.loads(line) for line in (tmp_path / "final_eval_samples.jsonl").read_text().splitlines()]
    assert {s["model"] for s in samples} == {"base", "warmup", "final"}
    assert "| warm start % [95 % CI] |" in (tmp_path / "summary.md").read_text()

    run(config_for(tmp_path, *sets), tiny_tokenizer)  # resumed with nothing left: not evaluated again
    assert "[eval] warmup:" not in capsys.readouterr().out


def test_a_killed_run_resumes_mid_gate_with_the_same_steps_and_data(tmp_path, config_for, tiny_tokenizer):
    whole = run(config_for(tmp_path / "whole"), tiny_tokenizer)
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):  # in step 2, after step 1 (gate streak 1) was checkpointed
        run(config_for(killed), tiny_tokenizer, FakeLearner(crash_at=2))
    assert [r["global_step"] for r in lines(killed / "metrics.jsonl")] == [1]
    resumed = run(config_for(killed), tiny_tokenizer)
    rows = lines(killed / "metrics.jsonl")
    assert [(r["stage"], r["stage_step"]) for r in rows] == EXPECTED  # the gate streak survived the restart
    assert resumed.learner.steps == 5 and resumed.learner.seeds == whole.learner.seeds[1:]
    questions = [(s["global_step"], s["question"]) for s in lines(killed / "samples.jsonl")]
    assert questions == [(s["global_step"], s["question"]) for s in lines(tmp_path / "whole/samples.jsonl")]


def test_a_server_index_built_for_another_collection_fails_before_any_actor_starts(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    def no_cluster():
        raise AssertionError("Ray was started")

    monkeypatch.setitem(sys.modules, "actors.cluster", SimpleNamespace(init_ray=no_cluster))
    Manifest({"backend": "server", "collection": "wiki", "embedder": "minilm"}, 1, 10, 384, 1, True).save(tmp_path)
    server = ["retriever.backend=server", "retriever.url=http://q.invalid:6333", f"retriever.index_path={tmp_path}"]
    args = ["--config", str(ROOT / "configs/tiny.yaml"), "--set", f"model.path={tiny_model_dir}"]
    args += [a for s in server for a in ("--set", s)]
    for main in (progressive.main, lambda a: evaluate.main([*a, "--modes", "rag", "--tasks", "mmlu"])):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "collection 'medr3_corpus'" in err and "collection 'wiki' (config: 'medr3_corpus')" in err
        assert "index_corpus.py" in err


def test_the_run_folder_holds_its_resolved_config_and_says_how_to_resume_evaluate_and_serve(
    tmp_path, config_for, tiny_tokenizer, capsys
):
    config = config_for(tmp_path)
    run(config, tiny_tokenizer)
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "report.png", "summary.md", "checkpoints"):
        assert (tmp_path / name).exists(), name
    resolved = load_config(tmp_path / "config.yaml")  # every override applied, every path absolute
    assert resolved == config and resolved.stages.reasoning.gate.patience == 2
    assert resolved.serve.model_fields_set == config.serve.model_fields_set  # unset serve keys stay as trained
    last = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    assert load_config(last / "config.yaml") == config  # serve/app.py reads the checkpoint's own
    readme = (tmp_path / "summary.md").read_text().split("\n\n")[0]
    commands = [line.split("`")[1].split()[1:] for line in readme.splitlines()[1:]]
    assert commands[0] == ["pipelines/progressive.py", "--config", f"{tmp_path}/config.yaml"]
    assert evaluate.parse_args(commands[1][1:]).model == [f"{last}/hf"]
    assert commands[2] == ["-m", "serve.app", "--config", f"{tmp_path}/config.yaml", "--checkpoint", f"{last}/hf"]
    out = capsys.readouterr().out
    assert "[reasoning   1/4   | step    1]" in out and "ETA stage" in out and "[gate] reasoning" in out
    assert readme in out
    run(load_config(commands[0][2]), tiny_tokenizer)  # the resume command: nothing left to train
    assert "[resume] " + last.name in capsys.readouterr().out
    assert [r["global_step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def steps_in_tensorboard(out_dir) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars("reward/total")]


def test_a_dead_learner_restarts_from_the_last_checkpoint_and_every_step_is_logged_once(
    tmp_path, config_for, tiny_tokenizer, capsys
):
    config = config_for(tmp_path)
    config.run.checkpoint_every = 10  # checkpoints at stage ends only: steps 2, 4, 5
    workers = fake_workers(config, tiny_tokenizer, FakeLearner(die_at=4))  # retrieval's 2nd step; step 3 is redone
    fresh = []
    workers.restart = lambda: fresh.append(FakeLearner()) or dataclasses.replace(workers, learner=fresh[-1])
    trainer = ProgressiveTrainer(config, workers=workers)
    trainer.run()
    trainer.close()
    rows = lines(tmp_path / "metrics.jsonl")
    assert [(r["stage"], r["stage_step"]) for r in rows] == EXPECTED
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5]
    assert steps_in_tensorboard(tmp_path) == [1, 2, 3, 4, 5]
    assert [s["global_step"] for s in lines(tmp_path / "samples.jsonl")] == [1, 2, 3, 4, 5]
    assert len(fresh) == 1 and fresh[0].steps == 5  # loaded 2 from step-000002, trained 3, 4, 5
    assert "[restart] LearnerRank died in step 4: new learner and reward actors from step-000002 (1/3)" in (
        capsys.readouterr().out
    )


def test_a_learner_that_keeps_dying_stops_the_job_naming_the_actor_and_the_step(tmp_path, config_for, tiny_tokenizer):
    config = config_for(tmp_path)
    config.run.max_restarts = 1
    workers = fake_workers(config, tiny_tokenizer, FakeLearner(die_at=3))
    workers.restart = lambda: dataclasses.replace(workers, learner=FakeLearner(die_at=3))
    trainer = ProgressiveTrainer(config, workers=workers)
    with pytest.raises(RuntimeError, match=r"LearnerRank died in step 3, after 1 restarts \(run.max_restarts\)"):
        trainer.run()
    trainer.close()
    assert [r["global_step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2]
