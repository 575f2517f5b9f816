#!/usr/bin/env bash
# Every benchmark at the GPU preset: bidirectional Llama, hidden 1024, 16 layers, vocab 126464, bf16 on cuda;
# batch 6, prompt 200, generation 256, block 32, 128 steps. Budgeted to finish within 8 minutes on one H100 / H200
# (each script has its own time limit). Extra flags go to every script, e.g. `benchmarks/run_gpu.sh --device cuda:1`.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 150 python benchmarks/sampler.py --preset gpu --repeats 3 "$@"
echo
timeout 120 python benchmarks/estimator.py --preset gpu --repeats 5 "$@"
echo
timeout 180 python benchmarks/train_step.py --preset gpu --train-steps 4 --compare-old "$@"
