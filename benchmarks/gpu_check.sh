#!/usr/bin/env bash
# The GPU check (docs/gpu.md): the device tests on CUDA, then a few timed rounds of the Shakespeare and
# FEMNIST-stand-in reference protocols (sequential and vectorized); the last line printed is one JSON line
# with samples/s and the projected hours of each full reference run. Under 8 minutes on one modern GPU.
#
#   bash benchmarks/gpu_check.sh                 # PYTHON=python3, FEDPLUG_CACHE=~/.cache/fedplug by default
#
# Needs a Python whose torch sees CUDA, with fedplug's dependencies (numpy, pyyaml, safetensors, grpcio,
# protobuf, tqdm, matplotlib, pytest); fedplug itself is read from this checkout. The data come from the cache:
# on a machine without the internet, copy there a cache in which the two data sets were built once
# (`fedplug --cfg configs/cpu/fedavg_lstm_on_shakespeare.yaml federate.total_round_num 1` and the same with
# configs/cpu/fedavg_convnet2_on_standin.yaml fetch and build them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch %s sees no CUDA device" % torch.__version__)'
"$PYTHON" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(), "torch", torch.__version__)'
# 1. every device test on CUDA (CPU vs CUDA agreement for every plug-in), the vectorized suite and SGD's direct
#    calls (foreach on CUDA) on CUDA
timeout 300 "$PYTHON" -m pytest -q -x -p no:cacheprovider tests/test_device.py tests/test_vectorized.py tests/test_vmap_lstm.py tests/test_optimizer_calls.py
# 2. a few rounds of each reference protocol, timed
timeout 240 "$PYTHON" benchmarks/speed/bench_gpu.py --device cuda --rounds 3
