"""Fast rollout modes against the exact sampler: speed, and what they change in the decoded tokens and accuracy.

Part 1 (speed) decodes random prompts with a random bidirectional Llama of the preset's size (odd rows left-padded by
a quarter of the prompt) in every mode, timed round-robin in one run (median of ``--repeats``), at ``--temperature``
(the SPG rollout temperature). Per mode it prints:

* forwards per rollout (one rollout = one `diffusion_generate` call on the batch; counted with a forward hook);
* positions fed: the canvas positions all forwards of a rollout feed the model, relative to the exact sampler (the
  KV cache modes feed only the current block, or block and suffix, between refreshes);
* wall time of a rollout, tokens/s (batch x generation length / wall time) and the speed-up over the exact sampler;
* greedy agreement: the share of generated tokens equal to the exact sampler's greedy output.

A random model is never confident (its probabilities are about 1 / vocabulary), so threshold decoding reveals only
the per-step minimum there: part 1 measures what the KV cache saves per forward, and the forward counts of
threshold decoding come from a trained model (part 2).

Part 2 (accuracy, ``--sudoku``, the default on CPU) decodes the held-out puzzles with the warm-started tiny Sudoku
policy (`trl_spg.tiny.sudoku`, cached under ``$TRL_SPG_CACHE``) through `trl_spg.evaluation.generate_and_score`,
greedily, in every mode and for a sweep of thresholds, at several (generation, block, steps) settings. Per mode:
forwards per batch, the sampler's wall time (round-robin), held-out accuracy with its standard error, the paired
change against the exact sampler, and token agreement with the exact greedy output.

    python benchmarks/rollout_speed.py                                  # CPU preset + Sudoku
    python benchmarks/rollout_speed.py --preset gpu --device cuda        # GPU preset, no Sudoku
    python benchmarks/rollout_speed.py --preset llada8b --device cuda    # LLaDA-8B shape, random bf16 weights
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time

import torch
from _common import build_model, describe, interleaved_times, parser, resolve, synchronize

from trl_spg.sampler import diffusion_generate

MODES = ("exact", "threshold", "threshold+min1", "prefix", "dual", "threshold+prefix", "threshold+dual")


def mode_options(name: str, threshold: float) -> dict:
    """`diffusion_generate` keywords of a mode name: ``exact`` or ``+``-joined parts (``threshold``, ``min1``,
    ``prefix``, ``dual``); ``threshold@0.7`` sets the threshold of that mode."""
    options = {}
    for part in name.split("+"):
        part, _, value = part.partition("@")
        if part == "threshold":
            options.update(decoding="threshold", threshold=float(value) if value else threshold)
        elif part == "min1":
            options["min_tokens_per_step"] = 1
        elif part in ("prefix", "dual"):
            options["kv_cache"] = part
        elif part != "exact":
            raise ValueError(f"Unknown mode part {part!r} in {name!r}.")
    return options


class ForwardCounter:
    """Counts the model's forwards and the canvas positions they feed (batch rows x input width)."""

    def __init__(self, model):
        self.forwards = self.positions = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.forwards += 1
        self.positions += ids.numel()

    def reset(self):
        self.forwards = self.positions = 0


def agreement(ids: torch.Tensor, reference: torch.Tensor) -> float:
    return (ids == reference).double().mean().item()


# ----------------------------------------------------------------------------------------------------------------
# Part 1: speed on a random model of the preset's size


def speed(args) -> None:
    describe(args, {"temperature": args.temperature, "threshold": args.threshold, "modes": list(args.modes)})
    start = time.perf_counter()
    model = build_model(args)
    synchronize(args.device)
    print(f"model built in {time.perf_counter() - start:.1f} s")
    mask_id = args.vocab - 1
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    prompt_ids = torch.randint(2, mask_id, (args.batch, args.prompt), generator=gen, device=args.device)
    prompt_mask = torch.ones_like(prompt_ids)
    pad = args.prompt // 4
    prompt_ids[1::2, :pad], prompt_mask[1::2, :pad] = 0, 0  # odd rows are left-padded
    base = dict(mask_token_id=mask_id, gen_length=args.gen, block_length=args.block, steps=args.steps)

    def rollout(name: str, temperature: float):
        options = base | mode_options(name, args.threshold)

        def run():
            generator = torch.Generator(device=args.device).manual_seed(args.seed + 1)
            return diffusion_generate(
                model, prompt_ids, prompt_mask, temperature=temperature, generator=generator, **options
            )

        return run

    counter = ForwardCounter(model)
    counts, greedy = {}, {}
    for name in args.modes:
        counter.reset()
        rollout(name, args.temperature)()
        counts[name] = (counter.forwards, counter.positions)
        greedy[name] = rollout(name, 0.0)()
    counter.handle.remove()
    times = interleaved_times(
        {name: rollout(name, args.temperature) for name in args.modes}, args.repeats, args.device
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = "exact" if "exact" in medians else args.modes[0]
    tokens = args.batch * args.gen
    print(f"\nrollout of {args.batch} x {args.gen} tokens at temperature {args.temperature}; speed-up vs {reference}")
    print(
        f"{'mode':<18} {'forwards':>8} {'positions':>9} {'rollout s':>9} {'tokens/s':>9} {'speed-up':>8} {'agree':>6}"
    )
    for name in args.modes:
        forwards, positions = counts[name]
        print(
            f"{name:<18} {forwards:>8} {positions / counts[reference][1]:>8.2f}x {medians[name]:>9.3f} "
            f"{tokens / medians[name]:>9.1f} {medians[reference] / medians[name]:>7.2f}x "
            f"{agreement(greedy[name], greedy[reference]):>6.3f}",
            flush=True,
        )


# ----------------------------------------------------------------------------------------------------------------
# Part 2: the tiny Sudoku policy decoded each way


@contextlib.contextmanager
def decoding_mode(options: dict, device: str, record: dict):
    """Make `trl_spg.evaluation` decode with ``options``; record the completion ids and the sampler's wall time."""
    from trl_spg.evaluation import decode

    original = decode.diffusion_generate

    def patched(model, ids, mask, config, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        out = original(model, ids, mask, dataclasses.replace(config, **options), **kwargs)
        synchronize(device)
        record["seconds"] += time.perf_counter() - start
        record["calls"] += 1
        record["ids"].append(out.cpu())
        return out

    decode.diffusion_generate = patched
    try:
        yield
    finally:
        decode.diffusion_generate = original
    if not record["calls"]:
        raise RuntimeError("trl_spg.evaluation no longer decodes through `diffusion_generate`; update this script.")


def sudoku(args) -> None:
    from trl_spg.decoding import DecodingConfig
    from trl_spg.evaluation import generate_and_score, paired_difference, summarize
    from trl_spg.tasks import get_task
    from trl_spg.tiny.sudoku import default_cache_dir, load_tiny_policy

    start = time.perf_counter()
    model, tokenizer = load_tiny_policy(seed=args.sudoku_seed, sft_steps=args.sudoku_warm_start_steps)
    print(f"\ntiny Sudoku policy (warm-start seed {args.sudoku_seed}, cache {default_cache_dir()}) ready in ", end="")
    print(f"{time.perf_counter() - start:.1f} s")
    model = model.to(args.device).eval()
    task = get_task("sudoku")
    dataset = task.dataset("test", prompt_style="compact", data="builtin", limit=args.sudoku_puzzles)
    counter = ForwardCounter(model)
    for index, setting in enumerate(args.sudoku_settings):
        gen, block, steps = (int(x) for x in setting.split("/"))
        decoding = DecodingConfig(gen_length=gen, block_length=block, steps=steps)
        # The threshold sweep runs at the first setting only.
        sweep = [m.replace("threshold", f"threshold@{t}") for m in args.sudoku_sweep for t in args.sudoku_thresholds]
        modes = list(args.sudoku_modes) + (sweep if index == 0 else [])
        # Round-robin: every mode decodes the held-out set once per round (greedy: every round gives the same
        # completions), and the sampler's time is recorded per round. The first round also counts forwards.
        results, seconds = {}, {name: [] for name in modes}
        for round_index in range(args.sudoku_repeats):
            for name in modes:
                record = {"seconds": 0.0, "calls": 0, "ids": []}
                counter.reset()
                with decoding_mode(mode_options(name, args.threshold), args.device, record):
                    records = generate_and_score(
                        task, model, tokenizer, dataset, decoding, batch_size=args.sudoku_batch
                    )
                seconds[name].append(record["seconds"])
                if round_index:
                    continue
                results[name] = dict(
                    records=records,
                    summary=summarize(records),
                    ids=torch.cat(record["ids"]),
                    forwards=counter.forwards / record["calls"],
                )
        exact = results["exact"]
        print(
            f"\nSudoku, {len(dataset)} held-out puzzles, greedy, generation {gen}, block {block}, {steps} steps, "
            f"batch {args.sudoku_batch}; sampler time = median of {args.sudoku_repeats} round-robin rounds"
        )
        header = f"{'mode':<18} {'fwd/batch':>9} {'sampler s':>9} {'speed-up':>8} {'accuracy':>16} "
        print(header + f"{'change vs exact':>18} {'tokens agree':>12} {'same text':>9}")
        for name in modes:
            res = results[name]
            median = statistics.median(seconds[name])
            change = paired_difference(exact["records"], res["records"])
            same = (res["ids"] == exact["ids"]).all(-1).double().mean().item()
            print(
                f"{name:<18} {res['forwards']:>9.2f} {median:>9.3f} "
                f"{statistics.median(seconds['exact']) / median:>7.2f}x "
                f"{res['summary']['accuracy']:>8.4f} +- {res['summary']['stderr']:.4f} "
                f"{change['difference']:>+9.4f} +- {change['stderr']:.4f} "
                f"{agreement(res['ids'], exact['ids']):>12.4f} {same:>9.3f}",
                flush=True,
            )
    counter.handle.remove()


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--temperature", type=float, default=0.9, help="temperature of the timed rollouts (default 0.9)")
    p.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of the threshold modes")
    p.add_argument("--modes", nargs="+", default=list(MODES), help=f"modes of part 1 (default: {' '.join(MODES)})")
    p.add_argument("--skip-speed", action="store_true", help="skip part 1")
    sudoku_flags = p.add_mutually_exclusive_group()
    sudoku_flags.add_argument("--sudoku", dest="sudoku", action="store_true", default=None, help="run part 2")
    sudoku_flags.add_argument("--no-sudoku", dest="sudoku", action="store_false", help="skip part 2")
    p.add_argument("--sudoku-seed", type=int, default=42, help="warm-start seed (SPGConfig's default seed: 42)")
    p.add_argument("--sudoku-warm-start-steps", type=int, help="SFT steps of the warm start (default: the policy's)")
    p.add_argument("--sudoku-puzzles", type=int, default=256, help="held-out puzzles (default 256)")
    p.add_argument("--sudoku-batch", type=int, default=128)
    p.add_argument("--sudoku-repeats", type=int, default=3)
    p.add_argument(
        "--sudoku-settings",
        nargs="+",
        default=["20/20/10", "20/10/10", "20/4/20"],
        help="generation/block/steps settings (default: the policy's own 20/20/10, then 2 and 5 blocks)",
    )
    p.add_argument("--sudoku-modes", nargs="+", default=list(MODES))
    p.add_argument(
        "--sudoku-thresholds",
        type=float,
        nargs="*",
        default=[0.5, 0.7, 0.8, 0.95, 0.99],
        help="thresholds swept at the first setting",
    )
    p.add_argument(
        "--sudoku-sweep",
        nargs="*",
        default=["threshold", "threshold+prefix"],
        help="modes whose threshold is swept (default: threshold, threshold+prefix)",
    )
    args = p.parse_args()
    if args.sudoku is None:
        args.sudoku = args.preset == "cpu"
    args = resolve(args)
    if not args.skip_speed:
        speed(args)
    if args.sudoku:
        sudoku(args)


if __name__ == "__main__":
    main()
