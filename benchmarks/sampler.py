"""Rollout cost of the diffusion sampler relative to the model's own forward passes.

    ratio = wall time of one rollout / (forward calls in the rollout x time of one model forward)

where "one model forward" is a plain ``model(input_ids=canvas, attention_mask=mask).logits`` call on the full
canvas (batch, prompt + gen), at the same batch size and length, timed in the same run (round-robin with the
rollouts). The sampler itself asks the model for the current block's logits only (``logits_to_keep``), so a ratio
below 1 is possible. The pre-optimisation sampler (`_reference.reference_generate`) is timed beside it
(``--reference-repeats`` times, its forward time pooled with the new sampler's round), and greedy rollouts of both
are checked to be token-identical.

    python benchmarks/sampler.py                  # CPU setup
    python benchmarks/sampler.py --preset gpu     # hidden 1024, 16 layers, vocab 126464, bf16 on cuda
"""

from __future__ import annotations

import statistics

import torch
from _common import build_model, describe, interleaved_times, parser, resolve
from _reference import reference_generate

from trl_spg.sampler import diffusion_generate


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.9, 0.0])
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    p.add_argument("--reference-repeats", type=int, default=1, help="timed runs of the old sampler (0: skip)")
    args = resolve(p.parse_args())
    describe(args, {"temperatures": args.temperatures, "remasking": args.remasking})

    model = build_model(args)
    mask_id = args.vocab - 1
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    prompt_ids = torch.randint(2, mask_id, (args.batch, args.prompt), generator=gen, device=args.device)
    prompt_mask = torch.ones_like(prompt_ids)
    canvas = torch.cat([prompt_ids, torch.full((args.batch, args.gen), mask_id, device=args.device)], 1)
    canvas_mask = torch.ones_like(canvas)

    calls = []
    hook = model.register_forward_pre_hook(lambda module, inputs: calls.append(1))

    def forward():
        with torch.no_grad():
            return model(input_ids=canvas, attention_mask=canvas_mask).logits

    def rollout(sampler, temperature):
        options = dict(
            mask_token_id=mask_id,
            gen_length=args.gen,
            block_length=args.block,
            steps=args.steps,
            temperature=temperature,
            remasking=args.remasking,
        )
        generator = torch.Generator(device=args.device).manual_seed(args.seed + 1)
        return lambda: sampler(model, prompt_ids, prompt_mask, generator=generator, **options)

    calls.clear()
    rollout(diffusion_generate, 0.0)()
    num_calls = len(calls)
    hook.remove()
    print(f"forward calls per rollout: {num_calls}; one model forward = model(input_ids, attention_mask).logits")
    print(f"on the full canvas {tuple(canvas.shape)} -> logits {tuple(canvas.shape) + (args.vocab,)}")
    print()
    header = f"{'temperature':>11} {'forward ms':>10} {'rollout s':>9} {'ratio':>6}"
    print(f"{header} {'old rollout s':>13} {'old ratio':>9} {'speed-up':>8}")
    for temperature in args.temperatures:
        times = interleaved_times(
            {"forward": forward, "new": rollout(diffusion_generate, temperature)}, args.repeats, args.device
        )
        forward_time, new_time = statistics.median(times["forward"]), statistics.median(times["new"])
        ratio = new_time / (num_calls * forward_time)
        row = f"{temperature:>11} {1e3 * forward_time:>10.2f} {new_time:>9.3f} {ratio:>6.3f}"
        if args.reference_repeats > 0:
            old = interleaved_times(
                {"forward": forward, "old": rollout(reference_generate, temperature)},
                args.reference_repeats,
                args.device,
                warmup=0,
            )
            # The old sampler is slow and timed few times: its forward time pools both rounds' samples.
            old_time = statistics.median(old["old"])
            old_ratio = old_time / (num_calls * statistics.median(times["forward"] + old["forward"]))
            row += f" {old_time:>13.3f} {old_ratio:>9.3f} {old_ratio / ratio:>7.1f}x"
        print(row, flush=True)

    if args.reference_repeats > 0:
        same = torch.equal(rollout(diffusion_generate, 0.0)(), rollout(reference_generate, 0.0)())
        print(f"\ngreedy rollout token-identical to the old sampler: {same}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
