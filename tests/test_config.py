import subprocess
import sys
from pathlib import Path

import pytest

from medr3.config import STAGE_NAMES, ConfigError, load_config, missing_paths
from medr3.names import ESTIMATORS, REWARD_TERMS, ROLLOUT_METRICS, gate_metrics

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def base_yaml() -> str:
    return (ROOT / "configs/tiny.yaml").read_text()


@pytest.mark.parametrize("name", ["default.yaml", "tiny.yaml"])
def test_shipped_configs_load_with_three_ordered_stages(name):
    config = load_config(ROOT / "configs" / name)
    assert [stage for stage, _ in config.stages.ordered()] == list(STAGE_NAMES)
    assert config.stages.reasoning.retrieval is False
    assert config.stages.retrieval.retrieval is True


def test_paper_defaults_apply_where_the_file_is_silent():
    grpo = load_config(ROOT / "configs/tiny.yaml").grpo
    assert grpo.estimator == "grpo" and grpo.kl_coef == 0.0 and grpo.grad_clip == 1.0
    assert grpo.clip_low == 0.2 and grpo.dual_clip == 3.0 and grpo.temperature == 1.0


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, base_yaml().replace("  prompts_per_step: 2", "  prompts_per_step: 2\n  lerning_rate: 1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "grpo.lerning_rate" in str(err.value) and "unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, base_yaml().replace("samples_per_prompt: 4", "samples_per_prompt: many"))
    with pytest.raises(ConfigError, match=r"grpo\.samples_per_prompt") as err:
        load_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("grpo.samples_per_prompt=1", "grpo.samples_per_prompt"),  # a group of one has no advantage
        ("grpo.clip_high=0.1", "grpo"),  # clip-higher may not narrow the upper bound
        ("learner.zero_stage=4", "learner.zero_stage"),
        ("generator.replicas=0", "generator.replicas"),
        ("retriever.backend=server", "retriever"),  # a server needs a URL
        ("stages.joint.steps=-1", "stages.joint.steps"),
    ],
)
def test_impossible_values_are_rejected_with_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ROOT / "configs/tiny.yaml", [override])


def test_set_overrides_parse_yaml_values():
    config = load_config(
        ROOT / "configs/tiny.yaml", ["grpo.lr=3e-4", "stages.joint.steps=7", "retriever.sources=[medquad]"]
    )
    assert config.grpo.lr == 3e-4 and config.stages.joint.steps == 7 and config.retriever.sources == ["medquad"]


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(ROOT / "configs/tiny.yaml", ["grpo.lr"])


def test_unknown_reward_term_is_rejected_before_anything_starts():
    with pytest.raises(ConfigError, match="unknown reward term 'helpfulness'"):
        load_config(ROOT / "configs/tiny.yaml", ["stages.joint.reward.gain={helpfulness: 1.0}"])


def test_training_on_an_eval_benchmark_is_rejected(tmp_path):
    bad = "stages.reasoning.train=[{kind: mirage, path: data/eval/mirage/benchmark_with_pmid.json.xz}]"
    with pytest.raises(ConfigError, match="never train on it"):
        load_config(ROOT / "configs/tiny.yaml", [bad])
    as_json = "stages.joint.train=[{kind: json, path: data/eval/mirage/benchmark_with_pmid.json.xz}]"
    with pytest.raises(ConfigError, match="never train on it"):  # MIRAGE through the generic kind is still MIRAGE
        load_config(ROOT / "configs/tiny.yaml", [as_json])


def test_a_users_question_files_are_training_data():
    config = load_config(
        ROOT / "configs/tiny.yaml",
        ["stages.joint.train=[{kind: jsonl, path: my/ward_questions.jsonl}, {kind: json, path: my/exam.json}]"],
    )
    assert [spec.kind for spec in config.stages.joint.train] == ["jsonl", "json"]
    with pytest.raises(ConfigError, match="kind"):
        load_config(ROOT / "configs/tiny.yaml", ["stages.joint.train=[{kind: csv, path: my/q.csv}]"])


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "grpo: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_pipelined_mode_refuses_recomputed_old_logprobs():
    with pytest.raises(ConfigError, match="one-step lag"):
        load_config(ROOT / "configs/tiny.yaml", ["grpo.pipelined=true", "learner.old_logprobs=recompute"])
    assert not load_config(ROOT / "configs/tiny.yaml", ["grpo.pipelined=true"]).recompute_old_logprobs()


def test_old_logprobs_are_recomputed_unless_both_sides_run_exact_fp32():
    bf16 = load_config(ROOT / "configs/tiny.yaml", ["learner.precision=bf16"])
    exact = load_config(ROOT / "configs/tiny.yaml", ["learner.precision=fp32", "model.dtype=float32"])
    assert bf16.recompute_old_logprobs() and not exact.recompute_old_logprobs()


def test_warm_start_is_on_in_the_cpu_configs_and_off_in_the_paper_config():
    assert load_config(ROOT / "configs/default.yaml").stages.warmup.steps > 0
    assert load_config(ROOT / "configs/tiny.yaml").stages.warmup.steps > 0
    assert load_config(ROOT / "configs/llama3_8b_8gpu.yaml").stages.warmup.steps == 0


def test_warm_start_refuses_an_evaluation_benchmark():
    with pytest.raises(ConfigError, match="never train on it"):
        load_config(ROOT / "configs/tiny.yaml", ["stages.warmup.mcq={kind: mirage, path: x.json}"])


def test_unknown_final_eval_task_is_rejected_at_load():
    with pytest.raises(ConfigError, match="final_eval_tasks"):
        load_config(ROOT / "configs/tiny.yaml", ["run.final_eval_tasks=[mmlu, nejm]"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["grpo.estimator=grpoo"], "grpo.estimator: unknown estimator 'grpoo' (known: grpo, drgrpo"),
        (["stages.joint.reward.penalty={helpfulness: 1.0}"], "stages.joint.reward: penalty: unknown reward term"),
        (
            ["stages.joint.gate={metric: reward/totl, threshold: 0.5}"],
            "stages.joint: gate.metric: unknown gate metric 'reward/totl' (known: reward/total, ",
        ),
        (  # a term the stage does not score never shows up among its metrics
            [
                "stages.reasoning.reward={gain: {answer: 1.0}}",
                "stages.reasoning.gate={metric: reward/evidence, threshold: 0.5}",
            ],  # fmt: skip
            "stages.reasoning: gate.metric: unknown gate metric 'reward/evidence'",
        ),
    ],
)
def test_unknown_registry_names_fail_at_load_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs/tiny.yaml", overrides)
    assert message in str(err.value)


def test_every_registered_name_is_declared_and_accepted():
    from medr3.experience import rollout_metrics
    from medr3.grpo import estimator_names
    from medr3.rewards import registered_terms

    assert set(estimator_names()) == set(ESTIMATORS) and registered_terms() == set(REWARD_TERMS)
    assert set(rollout_metrics([])) == {f"rollout/{name}" for name in ROLLOUT_METRICS}
    terms = "{" + ", ".join(f"{t}: 1.0" for t in REWARD_TERMS) + "}"
    for estimator in ESTIMATORS:
        assert load_config(ROOT / "configs/tiny.yaml", [f"grpo.estimator={estimator}"]).grpo.estimator == estimator
    for metric in gate_metrics(list(REWARD_TERMS)):
        gate = f"stages.joint.gate={{metric: {metric}, threshold: 0.5}}"
        config = load_config(ROOT / "configs/tiny.yaml", [f"stages.joint.reward.gain={terms}", gate])
        assert config.stages.joint.gate.metric == metric


def test_registries_refuse_a_name_the_config_does_not_declare():
    from medr3.grpo import register_advantage
    from medr3.rewards import register_reward

    with pytest.raises(ValueError, match="not declared in medr3/names.py"):
        register_reward("helpfulness")
    with pytest.raises(ValueError, match="not declared in medr3/names.py"):
        register_advantage("ppo")


def test_importing_the_config_imports_no_registry():
    """config.py checks registry names without importing the registries: no import cycle, no torch at load."""
    code = "import sys, medr3.config; print(sorted(m for m in sys.modules if m.split('.')[0:2] in "
    code += "(['medr3', 'rewards'], ['medr3', 'grpo']) or m == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_every_relative_path_is_resolved_against_medr3_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDR3_ROOT", str(tmp_path))
    config = load_config(
        ROOT / "configs/tiny.yaml",
        [
            "model.tokenizer=tok",
            "data.eval=[{kind: headqa, path: e.json}]",
            "reward.embedder=enc",
            "serve.checkpoint=ck",
        ],
    )
    paths = [config.run.output_dir, config.model.path, config.model.tokenizer, config.data.corpus]
    paths += [config.retriever.index_path, config.reward.embedder, config.serve.checkpoint, config.data.eval[0].path]
    paths += [spec.path for _, stage in config.stages.ordered() for spec in stage.train]
    paths += [spec.path for specs in config.stages.warmup.specs().values() for spec in specs]
    assert all(Path(p).is_relative_to(tmp_path) for p in paths), paths
    assert config.retriever.embedder == "minilm"  # a shipped encoder's name, not a path


def test_missing_inputs_are_those_the_run_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDR3_ROOT", str(tmp_path))  # nothing exists there
    reads_all = missing_paths(load_config(ROOT / "configs/tiny.yaml", ["run.final_eval=true"]))
    keys = {line.split(":")[0] for line in reads_all}
    assert f"model.path: {tmp_path}/artifacts/models/tiny/config.json does not exist" in reads_all
    assert {"data.corpus", "retriever.index_path", "stages.reasoning.train[0].path", "stages.warmup.mcq.path"} <= keys
    assert not any(key.startswith(("run.", "serve.", "data.eval")) for key in keys)  # outputs; read elsewhere
    no_search = ["stages.warmup.steps=0", "run.final_eval=false", "stages.retrieval.steps=0", "stages.joint.steps=0"]
    keys = {line.split(":")[0] for line in missing_paths(load_config(ROOT / "configs/tiny.yaml", no_search))}
    assert not any(key.startswith(("retriever.", "stages.warmup.")) for key in keys)
