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

from trl_spg.sampler import completion_mask_from_ids, diffusion_generate

MODES = ("exact", "threshold", "threshold+min1", "prefix", "dual", "threshold+prefix", "threshold+dual")
#: Part 3: each mode without and with batch compaction (the first is the reference).
COMPACTION_MODES = ("exact", "exact+compact", "threshold", "threshold+compact")


def mode_options(name: str, threshold: float, eos_token_id=None) -> dict:
    """`diffusion_generate` keywords of a mode name: ``exact`` or ``+``-joined parts (``threshold``, ``min1``,
    ``prefix``, ``dual``, ``compact``); ``threshold@0.7`` sets the threshold of that mode. Batch compaction
    (``compact_batch``: finished rows dropped, given ``eos_token_id``; identical rows forwarded once) is on only with
    ``compact``, so the other modes decode as the sampler did before it."""
    options = {"compact_batch": False}
    for part in name.split("+"):
        part, _, value = part.partition("@")
        if part == "compact":
            options.update(compact_batch=True, eos_token_id=eos_token_id)
        elif part == "threshold":
            options.update(decoding="threshold", threshold=float(value) if value else threshold)
        elif part == "min1":
            options["min_tokens_per_step"] = 1
        elif part in ("prefix", "dual"):
            options["kv_cache"] = part
        elif part != "exact":
            raise ValueError(f"Unknown mode part {part!r} in {name!r}.")
    return options


class ForwardCounter:
    """Counts the model's forwards, the rows they feed and the canvas positions (rows x input width)."""

    def __init__(self, model):
        self.forwards = self.rows = self.positions = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.forwards += 1
        self.rows += ids.shape[0]
        self.positions += ids.numel()

    def reset(self):
        self.forwards = self.rows = self.positions = 0


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
        options = base | mode_options(name, args.threshold, eos_token_id=1)  # `build_model`'s EOS

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

    settings = dict(options)
    eos = settings.pop("eos_token_id", None)  # a sampler keyword, not a decoding setting

    def patched(model, ids, mask, config, **kwargs):
        if eos is not None:  # the benchmark's choice: evaluation itself does not compact its raw generations
            kwargs["eos_token_id"] = eos
        synchronize(device)
        start = time.perf_counter()
        out = original(model, ids, mask, dataclasses.replace(config, **settings), **kwargs)
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
    from trl_spg.modeling import resolve_eos_token_ids
    from trl_spg.tasks import get_task
    from trl_spg.tiny.sudoku import default_cache_dir, load_tiny_policy

    start = time.perf_counter()
    model, tokenizer = load_tiny_policy(seed=args.sudoku_seed, sft_steps=args.sudoku_warm_start_steps)
    print(f"\ntiny Sudoku policy (warm-start seed {args.sudoku_seed}, cache {default_cache_dir()}) ready in ", end="")
    print(f"{time.perf_counter() - start:.1f} s")
    model = model.to(args.device).eval()
    eos_ids = resolve_eos_token_ids(model, tokenizer)
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
                with decoding_mode(mode_options(name, args.threshold, eos_ids), args.device, record):
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


# ----------------------------------------------------------------------------------------------------------------
# Part 3: batch compaction (finished rows dropped, identical rows forwarded once) on rollouts that end early


class EosAfterCut:
    """The controlled-length workload: adds ``bias`` to the EOS logit at every completion position from a cut on,
    the cut a hash of the row's prompt (uniform over the completion), so the generations of a prompt end near the same
    place and prompts end at different places. A forward hook on full forwards (no KV cache); each row's logits still
    depend on its own input only, as compaction requires."""

    def __init__(self, model, eos_id: int, prompt_width: int, gen_length: int, bias: float, seed: int):
        weights = torch.randint(1, 1 << 20, (prompt_width,), generator=torch.Generator().manual_seed(seed))
        self.weights, self.eos_id, self.prompt_width, self.gen_length, self.bias = (
            weights,
            eos_id,
            prompt_width,
            gen_length,
            bias,
        )
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def cuts(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Completion position of each row's cut."""
        return (prompt_ids.long().cpu() * self.weights).sum(-1) % self.gen_length

    def __call__(self, module, args, kwargs, output):
        ids = kwargs["input_ids"]
        if ids.shape[1] != self.prompt_width + self.gen_length:
            raise RuntimeError("EosAfterCut needs full forwards (no KV cache).")
        cut = self.prompt_width + self.cuts(ids[:, : self.prompt_width]).to(ids.device)
        keep = kwargs.get("logits_to_keep")
        positions = keep if isinstance(keep, torch.Tensor) else torch.arange(ids.shape[1], device=ids.device)
        output.logits[..., self.eos_id] += self.bias * (positions.unsqueeze(0) >= cut.unsqueeze(1))
        return output


def policy_workload(name: str, args):
    """A tiny warm-started policy (`trl_spg.tiny.<name>`: ``sudoku`` or ``countdown``) and its task's
    held-out prompts, each repeated ``--compaction-generations`` times (a rollout batch), at the run's settings."""
    import importlib

    from trl_spg.evaluation.decode import render_prompts
    from trl_spg.modeling import resolve_eos_token_ids
    from trl_spg.tasks import get_task

    module = importlib.import_module(f"trl_spg.tiny.{name}")
    model, tokenizer = module.load_tiny_policy(seed=args.sudoku_seed, sft_steps=args.sudoku_warm_start_steps)
    model = model.to(args.device).eval()
    dataset = get_task(name).dataset("test", prompt_style="compact", data="builtin", limit=args.compaction_prompts)
    texts = render_prompts(tokenizer, dataset["prompt"])
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    generations = args.compaction_generations
    ids = batch["input_ids"].repeat_interleave(generations, 0).to(args.device)
    mask = batch["attention_mask"].repeat_interleave(generations, 0).to(args.device)
    run = module.TRAINING_DEFAULTS
    settings = dict(
        mask_token_id=tokenizer.mask_token_id,
        gen_length=run["max_completion_length"],
        block_length=run["block_length"],
        steps=run["diffusion_steps"],
        temperature=run["temperature"],
    )
    label = f"tiny {name} policy, {len(texts)} prompts x {generations} generations"
    return label, model, ids, mask, settings, resolve_eos_token_ids(model, tokenizer)


def eos_cut_workload(args):
    """The preset's random model with `EosAfterCut`: completions of controlled, varied lengths."""
    model = build_model(args)
    generations = args.eos_cut_generations
    prompts = max(1, args.batch // generations)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    ids = torch.randint(2, args.vocab - 1, (prompts, args.prompt), generator=gen, device=args.device)
    mask = torch.ones_like(ids)
    ids[1::2, : args.prompt // 4], mask[1::2, : args.prompt // 4] = 0, 0  # odd prompts are left-padded
    hook = EosAfterCut(model, 1, args.prompt, args.gen, args.eos_bias, args.seed)
    cuts = hook.cuts(ids).tolist()
    ids, mask = ids.repeat_interleave(generations, 0), mask.repeat_interleave(generations, 0)
    settings = dict(
        mask_token_id=args.vocab - 1,
        gen_length=args.gen,
        block_length=args.block,
        steps=args.steps,
        temperature=args.temperature,
    )
    label = f"random model, EOS from a per-prompt cut {cuts} on, {prompts} prompts x {generations} generations"
    return label, model, ids, mask, settings, [1]


def compaction(args) -> None:
    workloads = {"eos-cut": lambda: eos_cut_workload(args)}
    workloads.update({name: (lambda name=name: policy_workload(name, args)) for name in ("sudoku", "countdown")})
    for workload in args.compaction_workloads:
        compare_compaction(args, *workloads[workload]())


def compare_compaction(args, label, model, ids, mask, settings, eos) -> None:
    """Decode one workload in every mode of ``--compaction-modes``: forwards, rows per forward, rows fed, wall time,
    and whether each ``+compact`` mode gives its base mode's tokens up to the first EOS."""
    counter = ForwardCounter(model)

    def rollout(name: str):
        options = settings | mode_options(name, args.threshold, eos_token_id=eos)

        def run():
            generator = torch.Generator(device=args.device).manual_seed(args.seed + 1)
            return diffusion_generate(model, ids, mask, generator=generator, **options)

        return run

    counts, outputs = {}, {}
    for name in args.compaction_modes:
        counter.reset()
        outputs[name] = rollout(name)().cpu()
        counts[name] = (counter.forwards, counter.rows)
    counter.handle.remove()
    times = interleaved_times({name: rollout(name) for name in args.compaction_modes}, args.repeats, args.device)
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = args.compaction_modes[0]
    lengths = completion_mask_from_ids(outputs[reference], eos).sum(-1).double()
    print(
        f"\nbatch compaction: {label}; {len(ids)} rollouts, {settings['gen_length']} tokens (block "
        f"{settings['block_length']}, {settings['steps']} steps), temperature {settings['temperature']}; "
        f"{reference}'s completions end after {lengths.mean():.1f} tokens on average (min {lengths.min():.0f}, "
        f"max {lengths.max():.0f}); wall time = median of {args.repeats} round-robin runs"
    )
    print(
        f"{'mode':<18} {'forwards':>8} {'rows/fwd':>8} {'rows fed':>9} {'rollout s':>9} {'speed-up':>8} "
        f"{'same to EOS':>11}"
    )
    for name in args.compaction_modes:
        forwards, rows = counts[name]
        base = name.replace("+compact", "")
        same = "-"
        if base != name and base in outputs:
            keep = completion_mask_from_ids(outputs[base], eos).bool()
            same = str(
                torch.equal(completion_mask_from_ids(outputs[name], eos).bool(), keep)
                and torch.equal(outputs[name][keep], outputs[base][keep])
            )
        print(
            f"{name:<18} {forwards:>8} {rows / max(forwards, 1):>8.1f} {rows / counts[reference][1]:>8.2f}x "
            f"{medians[name]:>9.3f} {medians[reference] / medians[name]:>7.2f}x {same:>11}",
            flush=True,
        )


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
    compaction_flags = p.add_mutually_exclusive_group()
    compaction_flags.add_argument(
        "--compaction",
        dest="compaction",
        action="store_true",
        default=True,
        help="run part 3 (batch compaction; the default)",
    )
    compaction_flags.add_argument("--no-compaction", dest="compaction", action="store_false", help="skip part 3")
    p.add_argument(
        "--compaction-modes",
        nargs="+",
        default=list(COMPACTION_MODES),
        help=f"modes of part 3, the first the reference (default: {' '.join(COMPACTION_MODES)})",
    )
    p.add_argument(
        "--compaction-workloads",
        nargs="+",
        default=["eos-cut", "sudoku"],
        choices=["eos-cut", "sudoku", "countdown"],
        help="eos-cut: the preset's random model with EOS from a per-prompt cut on (controlled lengths); sudoku / "
        "countdown: the tiny warm-started policy (countdown: variable lengths)",
    )
    p.add_argument("--compaction-prompts", type=int, default=16, help="policy workloads: prompts (default 16)")
    p.add_argument("--compaction-generations", type=int, default=8, help="policy workloads: generations per prompt")
    p.add_argument("--eos-cut-generations", type=int, default=2, help="eos-cut: generations per prompt (default 2)")
    p.add_argument("--eos-bias", type=float, default=30.0, help="eos-cut: EOS logit bias after the cut")
    args = p.parse_args()
    if args.sudoku is None:
        args.sudoku = args.preset == "cpu"
    args = resolve(args)
    if not args.skip_speed:
        speed(args)
    if args.sudoku:
        sudoku(args)
    if args.compaction:
        compaction(args)


if __name__ == "__main__":
    main()
