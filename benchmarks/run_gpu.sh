#!/usr/bin/env bash
# GPU benchmarks. Extra flags go to every script, e.g. `benchmarks/run_gpu.sh --device cuda:1`.
#
#   benchmarks/run_gpu.sh            sampler, estimator and training step at the GPU preset (bidirectional Llama,
#                                    hidden 1024, 16 layers, vocab 126464, bf16 on cuda; batch 6, prompt 200,
#                                    generation 256, block 32, 128 steps): within 8 minutes on one H100 / H200
#   benchmarks/run_gpu.sh rollout    fast rollout modes against the exact sampler (benchmarks/rollout_speed.py) at
#                                    the GPU preset and at LLaDA-8B's shape (hidden 4096, 32 layers, vocab 126464,
#                                    random bf16 weights built on the GPU): within 9 minutes
#   benchmarks/run_gpu.sh compaction batch compaction at LLaDA-8B's shape: 8 prompts x 6 rollouts, generation 256,
#                                    block 32, 128 steps, lengths set by an EOS logit bias after a per-prompt cut;
#                                    exact, exact+compact, threshold, threshold+compact (within 5 minutes)
#   benchmarks/run_gpu.sh all        sampler, estimator, training step and fast rollout modes (within 17 minutes)
#
# Each script runs under its own time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
part=default
if [[ $# -gt 0 && ( "$1" == rollout || "$1" == compaction || "$1" == all ) ]]; then
    part=$1
    shift
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [[ $part == default || $part == all ]]; then
    timeout 150 python benchmarks/sampler.py --preset gpu --repeats 3 "$@"
    echo
    timeout 120 python benchmarks/estimator.py --preset gpu --repeats 5 "$@"
    echo
    timeout 180 python benchmarks/train_step.py --preset gpu --train-steps 4 --compare-old "$@"
fi
if [[ $part == rollout || $part == all ]]; then
    [[ $part == all ]] && echo
    # Random weights are never confident, so threshold decoding runs the fixed schedule's forwards here and
    # "threshold+min1" (one token per forward) would only be slower: it is left out.
    timeout 180 python benchmarks/rollout_speed.py --preset gpu --device cuda --repeats 3 --no-sudoku \
        --modes exact threshold prefix dual threshold+prefix threshold+dual "$@"
    echo
    timeout 330 python benchmarks/rollout_speed.py --preset llada8b --device cuda --repeats 2 --no-sudoku \
        --modes exact threshold prefix dual threshold+dual "$@"
fi
if [[ $part == compaction ]]; then
    timeout 300 python benchmarks/rollout_speed.py --preset llada8b --device cuda --repeats 2 --skip-speed \
        --no-sudoku --compaction-workloads eos-cut --batch 48 --eos-cut-generations 6 --gen 256 --block 32 \
        --steps 128 "$@"
fi
