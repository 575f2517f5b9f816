"""Cost of scoring completions on the rollout's canvas (`likelihood_canvas`) against the trimmed one.

Completions that end early (their first EOS at a random position in the first ``--end_fraction`` of the canvas) are
scored by SPG's estimator (`trl_spg.objective.SPGObjective.loss`, forward + backward) on

* ``masked`` / ``visible``: prompt + ``gen`` positions, the canvas the rollout was decoded on (the default);
* ``trimmed``: prompt + the longest completion of the micro-batch,

and the script prints each one's median time and the ratio to ``trimmed``, measured round-robin in one run. The
ratio approaches (prompt + gen) / (prompt + longest completion) for a compute-bound model.

    python benchmarks/likelihood_canvas.py                     # CPU setup, completions ending in the first half
    python benchmarks/likelihood_canvas.py --end_fraction 1.0  # completions of any length
"""

from __future__ import annotations

import torch
from _common import build_model, describe, interleaved_medians, parser, resolve

from trl_spg.objective import SPGObjective


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--masks", type=int, default=2, help="Monte Carlo masks per completion")
    p.add_argument("--end_fraction", type=float, default=0.5, help="completions end within this share of the canvas")
    args = resolve(p.parse_args())
    describe(args, {"masks": args.masks, "end_fraction": args.end_fraction})
    device, batch, gen_length = args.device, args.batch, args.gen

    model = build_model(args, train=True)
    mask_id, eos = args.vocab - 1, 1
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    prompt_ids = torch.randint(2, mask_id, (batch, args.prompt), generator=gen)
    canvas = torch.randint(2, mask_id, (batch, gen_length), generator=gen)
    lengths = torch.randint(1, max(2, int(gen_length * args.end_fraction)) + 1, (batch,), generator=gen)
    canvas[torch.arange(batch), lengths - 1] = eos
    completion_mask = (torch.arange(gen_length)[None] < lengths[:, None]).long()
    longest = int(lengths.max())
    advantages = torch.randn(batch, generator=gen)

    def inputs(width: int) -> dict:
        return {
            "prompt_ids": prompt_ids.to(device),
            "prompt_mask": torch.ones_like(prompt_ids).to(device),
            "completion_ids": canvas[:, :width].to(device),
            "completion_mask": completion_mask[:, :width].to(device),
            "advantages": advantages.to(device),
        }

    variants = {
        "masked": (SPGObjective(num_mc_masks=args.masks, block_length=args.block), inputs(gen_length)),
        "visible": (
            SPGObjective(num_mc_masks=args.masks, block_length=args.block, tail_visible=True),
            inputs(gen_length),
        ),
        "trimmed": (SPGObjective(num_mc_masks=args.masks, block_length=args.block), inputs(longest)),
    }

    def run(objective, batch_inputs):
        def step():
            model.zero_grad(set_to_none=True)
            generator = torch.Generator().manual_seed(args.seed)
            objective.loss(model, batch_inputs, mask_token_id=mask_id, generator=generator).loss.backward()

        return step

    medians = interleaved_medians({name: run(*v) for name, v in variants.items()}, args.repeats, device)
    print(f"completion lengths {lengths.tolist()} (longest {longest}) on a canvas of {gen_length}")
    print(f"{'canvas':<8} {'positions':>9} {'fwd+bwd ms':>10} {'vs trimmed':>10}")
    for name, (_, batch_inputs) in variants.items():
        positions = args.prompt + batch_inputs["completion_ids"].shape[1]
        print(f"{name:<8} {positions:>9} {1000 * medians[name]:>10.1f} {medians[name] / medians['trimmed']:>9.2f}x")


if __name__ == "__main__":
    main()
