"""Shared pieces of the benchmark scripts: presets, CLI flags, the model, timing and memory measurement."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Make `trl_spg` importable when the scripts are run from a source checkout without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import LlamaForCausalLM  # noqa: E402

from trl_spg.tiny import bidirectional_llama  # noqa: E402

PRESETS = {
    # The smallest run of every script: what the test suite's smoke tests use.
    "tiny": dict(
        vocab=64,
        hidden=32,
        layers=1,
        heads=2,
        intermediate=64,
        batch=2,
        prompt=4,
        gen=8,
        block=4,
        steps=4,
        device="cpu",
        dtype="float32",
    ),
    # The CPU setup: a tiny bidirectional Llama with a realistic vocabulary.
    "cpu": dict(
        vocab=32000,
        hidden=128,
        layers=4,
        heads=4,
        intermediate=512,
        batch=8,
        prompt=32,
        gen=64,
        block=32,
        steps=64,
        device="cpu",
        dtype="float32",
    ),
    # The larger GPU setup (LLaDA's vocabulary, a 16-layer 1024-wide model, the paper's decoding settings).
    "gpu": dict(
        vocab=126464,
        hidden=1024,
        layers=16,
        heads=16,
        intermediate=4096,
        batch=6,
        prompt=200,
        gen=256,
        block=32,
        steps=128,
        device="cuda",
        dtype="bfloat16",
    ),
    # LLaDA-8B's shape (hidden 4096, 32 layers, 32 heads, MLP 12288, LLaDA's vocabulary) with random weights, built
    # on the GPU in bf16 (about 16 GB), at the `gpu` preset's decoding settings.
    "llada8b": dict(
        vocab=126464,
        hidden=4096,
        layers=32,
        heads=32,
        intermediate=12288,
        batch=6,
        prompt=200,
        gen=256,
        block=32,
        steps=128,
        device="cuda",
        dtype="bfloat16",
    ),
}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parser(description: str) -> argparse.ArgumentParser:
    """Flags shared by every script; a preset fills whatever is not given explicitly."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="size preset (default: cpu)")
    p.add_argument("--vocab", type=int, help="vocabulary size")
    p.add_argument("--hidden", type=int, help="hidden size")
    p.add_argument("--layers", type=int, help="number of layers")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--intermediate", type=int, help="MLP width")
    p.add_argument("--batch", type=int, help="rollouts / completions per batch")
    p.add_argument("--prompt", type=int, help="prompt length")
    p.add_argument("--gen", type=int, help="generation (completion) length")
    p.add_argument("--block", type=int, help="block length")
    p.add_argument("--steps", type=int, help="diffusion steps per rollout")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="model dtype")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (the median is reported)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset size flags from the preset and apply ``--threads``."""
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.torch_dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} asked for, but CUDA is not available.")
    return args


def describe(args: argparse.Namespace, extra: dict | None = None, timing: str | None = None) -> None:
    """Print the machine and the setup, so that every output says what it measured."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = args.device
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    sizes = {k: getattr(args, k) for k in ("vocab", "hidden", "layers", "heads", "intermediate")}
    print(f"model:   bidirectional Llama {sizes}, {args.dtype} on {device}")
    setup = {k: getattr(args, k) for k in ("batch", "prompt", "gen", "block", "steps")}
    print(f"setup:   {setup | (extra or {})}, {timing or f'median of {args.repeats} runs'}")


def build_model(args: argparse.Namespace, *, train: bool = False) -> LlamaForCausalLM:
    """A random bidirectional Llama (`trl_spg.tiny.bidirectional_llama`) of the preset's size; the last id is the mask
    token, 0 the pad and 1 the EOS."""
    model = bidirectional_llama(
        args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(256, args.prompt + args.gen),
        pad_token_id=0,
        eos_token_id=1,
        seed=args.seed,
        device=args.device,
        dtype=args.torch_dtype,
    )
    return model.train(train)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], object], device: str) -> float:
    """Wall time of one call in seconds (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, device: str, warmup: int = 1):
    """Wall times (seconds) of each function, timed round-robin so that all of them see the same machine load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: str, warmup: int = 1):
    """Median of `interleaved_times` for each function."""
    times = interleaved_times(fns, repeats, device, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


class PeakMemory:
    """Peak bytes allocated by PyTorch while a block runs, above what was allocated when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` (caching allocator statistics). CPU: PyTorch has no allocator
    statistics there, so the block runs under ``torch.profiler`` with ``profile_memory=True``; every CPU allocation
    and free made by PyTorch's allocator while profiling is recorded with the running total ("Total Allocated"),
    and the peak is the largest running total. Allocations made before the block and freed inside it are not
    subtracted, so the figure is, if anything, an overestimate.

    ``mark()`` records the current position (a distinctive small allocation on CPU); ``peak_between(a, b)`` is the
    peak between two marks and ``at(a)`` the allocated total at a mark, both relative to the block's start.
    """

    _MARK_BYTES = 999_983  # a size (prime) that no real tensor of these benchmarks has

    def __init__(self, device: str):
        self.device = device
        self.cuda = device.startswith("cuda")
        self.num_marks = 0
        self._cuda_marks: list[tuple[int, int]] = []  # (allocated now, peak since the previous mark)

    def __enter__(self):
        if self.cuda:
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.profile = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            )
            self.profile.__enter__()
        return self

    def mark(self) -> int:
        """Record a point in the block; returns its index for `peak_between` / `at`."""
        if self.cuda:
            current = torch.cuda.memory_allocated(self.device)
            self._cuda_marks.append((current, torch.cuda.max_memory_allocated(self.device)))
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            torch.empty(self._MARK_BYTES, dtype=torch.uint8)
        self.num_marks += 1
        return self.num_marks - 1

    def __exit__(self, *exc):
        if self.cuda:
            synchronize(self.device)
            self.mark()
            self.total_peak = max(peak for _, peak in self._cuda_marks) - self.start
            return False
        self.profile.__exit__(*exc)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "trace.json")
            self.profile.export_chrome_trace(path)
            with open(path) as f:
                events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
        events.sort(key=lambda e: e["args"].get("Ev Idx", 0))
        self.totals = [e["args"]["Total Allocated"] for e in events]
        self.mark_positions = [i for i, e in enumerate(events) if e["args"]["Bytes"] == self._MARK_BYTES]
        self.total_peak = max(self.totals, default=0)
        return False

    def at(self, mark: int) -> int:
        """Bytes allocated at ``mark`` (marker excluded), relative to the block's start."""
        if self.cuda:
            return self._cuda_marks[mark][0] - self.start
        return self.totals[self.mark_positions[mark]] - self._MARK_BYTES

    def peak_between(self, first: int, last: int) -> int:
        """Peak bytes allocated between two marks, relative to the block's start."""
        if self.cuda:
            return max(peak for _, peak in self._cuda_marks[first + 1 : last + 1]) - self.start
        window = self.totals[self.mark_positions[first] + 1 : self.mark_positions[last]]
        return max(window, default=self.at(first))
