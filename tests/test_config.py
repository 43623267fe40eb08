from pathlib import Path

import pytest

from medr3.config import STAGE_NAMES, ConfigError, load_config

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
