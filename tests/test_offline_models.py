import hashlib

import pytest

from medr3.offline_models import build_tiny_model

from .conftest import DATA


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_model_build_is_deterministic(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "tiny", DATA / "corpus", seed=0)
    assert digest(again) == digest(tiny_model_dir)


def test_a_different_seed_gives_different_weights(tmp_path, tiny_model_dir):
    other = build_tiny_model(tmp_path / "tiny", DATA / "corpus", seed=1)
    assert digest(other)["model.safetensors"] != digest(tiny_model_dir)["model.safetensors"]
    assert digest(other)["tokenizer.json"] == digest(tiny_model_dir)["tokenizer.json"]


def test_tiny_model_fits_vllm_cpu_and_the_protocol(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.head_dim >= 32  # vLLM's CPU attention rejects smaller heads (docs/architecture.md, "CPU numerics")
    assert tiny_tokenizer.chat_template and tiny_tokenizer.eos_token == "<|im_end|>"
    for tag in ("<think>", "</search>", "<document>", "</answer>"):
        assert len(tiny_tokenizer(tag, add_special_tokens=False).input_ids) == 1
    text = "<think>a <search>b</search></think>"
    assert tiny_tokenizer.decode(tiny_tokenizer(text).input_ids) == text


def test_tiny_model_generates_in_transformers(tiny_model_dir, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 5_000_000
    ids = tiny_tokenizer("<|im_start|>user\nscurvy?<|im_end|>\n", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8


@pytest.mark.parametrize("name", ["artifacts/models/smollm2-135m-instruct"])
def test_smollm2_is_built_by_setup_as_an_hf_folder(root, name):
    from transformers import AutoConfig, AutoTokenizer

    folder = root / name
    if not (folder / "config.json").is_file():
        pytest.skip("SmolLM2 not built here: run ./setup.sh (CI always does)")
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.head_dim == 64 and config.vocab_size == 49152
    assert not hasattr(config, "quantization_config")
    assert AutoTokenizer.from_pretrained(folder).chat_template
