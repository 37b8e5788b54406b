#!/usr/bin/env bash
# Install the Python reference stack (PyTorch + transformers + diffusers) used to build the
# oracle fixtures, on a CPU-only Linux x86_64 machine with only PyPI reachable.
#
#   tools/oracle/install.sh [VENV_DIR]     (default /work/venv-oracle)
#
# Idempotent: re-running reuses the venv and pip skips what is already installed.
#
# Why the dance: PyPI's Linux torch 2.15.0 wheel depends on the CUDA 13 runtime wheels (through
# the `cuda-toolkit` meta package, plus triton and cuda-bindings). On CPU we install torch with
# --no-deps, then its pure-Python deps, then --no-deps the nvidia wheels whose shared libraries
# libtorch links against (import fails without them). triton / cuda-bindings are not needed.
# Download is ~2.8 GB; takes a few minutes.
set -euo pipefail

VENV="${1:-/work/venv-oracle}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# 1. torch itself, without the resolver pulling the whole CUDA toolkit + triton.
"${PIP[@]}" --no-deps "torch==2.15.0"

# 2. torch's pure-Python dependencies.
"${PIP[@]}" filelock "typing-extensions>=4.13.0" "setuptools>=77.0.3" "sympy>=1.13.3" \
    "mpmath<1.4" "networkx>=2.5.1" jinja2 markupsafe "fsspec>=0.8.5"

# 3. The CUDA 13 library wheels libtorch is linked against (versions as pinned by
#    torch 2.15.0's metadata: cuda-toolkit==13.2.2 extras + the direct nvidia pins).
"${PIP[@]}" --no-deps \
    "nvidia-cublas==13.4.1.3.*" \
    "nvidia-cuda-runtime==13.2.86.*" \
    "nvidia-cuda-nvrtc==13.2.86.*" \
    "nvidia-cuda-cupti==13.2.86.*" \
    "nvidia-cufft==12.2.0.57.*" \
    "nvidia-curand==10.4.2.66.*" \
    "nvidia-cusolver==12.2.0.11.*" \
    "nvidia-cusparse==12.7.10.12.*" \
    "nvidia-nvjitlink>=13.2.86,<14" \
    "nvidia-nvtx==13.2.86.*" \
    "nvidia-cufile==1.17.1.22.*" \
    "nvidia-cudnn-cu13==9.26.0.51" \
    "nvidia-cusparselt-cu13==0.8.1" \
    "nvidia-nccl-cu13==2.30.7" \
    "nvidia-nvshmem-cu13==3.7.2"

# 4. The HF stack (these resolve normally; none of them pulls torch in). Pinned to the versions
#    the committed fixtures were generated with (drop the pins to try newer ones).
"${PIP[@]}" "transformers==5.24.0" "tokenizers==0.23.3" "diffusers==0.42.1" "safetensors==0.8.0" \
    "numpy==2.4.6" "ftfy==6.3.1" "pillow==13.0.0" regex

# 5. open-clip-torch only for its bpe_simple_vocab_16e6.txt.gz (no deps: we never import it).
"${PIP[@]}" --no-deps "open-clip-torch==3.3.0"

"$VENV/bin/python" -c "import torch, transformers, diffusers; print(torch.__version__, transformers.__version__, diffusers.__version__)"
