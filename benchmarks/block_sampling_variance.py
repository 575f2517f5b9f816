"""Variance of SPG's ELBO and EUBO estimates with independent vs stratified block choice, side by side.

For each completion of a fixed set (lengths 16, 13, 9 and 5 with blocks of 4, so 4, 4, 3 and 2 content blocks; two
different completions per length) the script draws ``--repeats`` independent sets of ``m`` Monte Carlo masks with
`trl_spg.masking.sample_masks` and computes the per-token ELBO and EUBO estimates of each set exactly as
`SPGObjective` does (`trl_spg.bounds.elbo_estimate`, `trl_spg.bounds.eubo_estimate`). It prints, per masking
strategy, ``m`` and block choice, the estimators' variance across repeats averaged over the completions, their mean
over the completions (the two block choices estimate the same ELBO, so its means must agree within noise), and the
ratio stratified / independent of the averaged variances.

The model is a random bidirectional Llama (vocabulary 16, hidden 32, 2 layers) whose output layer is scaled up so
its predictions are far from uniform; prompts of 4 tokens, prompt masking probability 0.15 (SPG's default), masked
fraction in [0, 1], EUBO order 1.5. Each completion's copies go through the model in chunks of rows, without
gradients, in float32 on the CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trl_spg.bounds import elbo_estimate, eubo_estimate  # noqa: E402
from trl_spg.masking import sample_masks  # noqa: E402
from trl_spg.scoring import masked_token_logprobs  # noqa: E402
from trl_spg.tiny import bidirectional_llama  # noqa: E402

VOCAB = 16
MASK = VOCAB - 1
BLOCK = 4
PROMPT = 4
LENGTHS = (16, 16, 13, 13, 9, 9, 5, 5)


def build_model(seed: int):
    model = bidirectional_llama(
        VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=seed, pad_token_id=0
    )
    model.lm_head.weight.data.mul_(8.0)
    return model.eval()


def completions(seed: int):
    gen = torch.Generator().manual_seed(seed)
    width = max(LENGTHS)
    prompt_ids = torch.randint(1, MASK, (len(LENGTHS), PROMPT), generator=gen)
    completion_ids = torch.randint(1, MASK, (len(LENGTHS), width), generator=gen)
    lengths = torch.tensor(LENGTHS)
    completion_mask = (torch.arange(width)[None] < lengths[:, None]).long()
    return prompt_ids, completion_ids, completion_mask, lengths


@torch.no_grad()
def estimates(model, data, *, strategy, num_masks, block_sampling, repeats, seed, beta, chunk):
    """(ELBO, EUBO) per-token estimates, each (completions, repeats)."""
    prompt_ids, completion_ids, completion_mask, lengths = data
    generator = torch.Generator().manual_seed(seed)
    elbos, eubos = [], []
    for row in range(len(lengths)):
        row_elbo, row_eubo = [], []
        for start in range(0, repeats, chunk):
            n = min(chunk, repeats - start)
            prompts = prompt_ids[row : row + 1].expand(n, -1)
            prompt_mask = torch.ones_like(prompts)
            completion = completion_ids[row : row + 1].expand(n, -1)
            mask = completion_mask[row : row + 1].expand(n, -1)
            masks = sample_masks(
                prompt_mask,
                mask,
                num_masks=num_masks,
                strategy=strategy,
                block_length=BLOCK,
                p_mask_prompt=0.15,
                block_sampling=block_sampling,
                generator=generator,
            )
            logps = masked_token_logprobs(model, prompts, prompt_mask, completion, masks, MASK)
            length = lengths[row : row + 1].expand(n)
            row_elbo.append(elbo_estimate(logps, masks.scored))
            row_eubo.append(eubo_estimate(logps, masks.scored, length, beta))
        elbos.append(torch.cat(row_elbo))
        eubos.append(torch.cat(row_eubo))
    return torch.stack(elbos).double(), torch.stack(eubos).double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=4000, help="mask sets per completion and setting")
    p.add_argument("--masks", type=int, nargs="+", default=[2, 4], help="Monte Carlo masks per completion (m)")
    p.add_argument("--strategies", nargs="+", default=["block_random", "block_all"])
    p.add_argument("--beta", type=float, default=1.5, help="EUBO order")
    p.add_argument("--chunk", type=int, default=500, help="repeats per forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args.seed)
    data = completions(args.seed + 1)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); {args.repeats} mask sets per completion")
    print(f"completion lengths {list(LENGTHS)}, block {BLOCK}, prompt {PROMPT}, p_mask_prompt 0.15, beta {args.beta}")
    print("variance: across mask sets, per-token scale, averaged over the completions; mean: over everything\n")
    header = (
        f"{'strategy':<13} {'m':>2} {'bound':<5} {'var indep.':>11} {'var strat.':>11} {'strat/indep':>11} "
        f"{'mean indep.':>12} {'mean strat.':>12}"
    )
    print(header)
    started = time.perf_counter()
    for strategy in args.strategies:
        for num_masks in args.masks:
            results = {}
            for block_sampling in ("independent", "stratified"):
                results[block_sampling] = estimates(
                    model,
                    data,
                    strategy=strategy,
                    num_masks=num_masks,
                    block_sampling=block_sampling,
                    repeats=args.repeats,
                    seed=args.seed + 2,
                    beta=args.beta,
                    chunk=args.chunk,
                )
            for index, bound in enumerate(("ELBO", "EUBO")):
                independent, stratified = results["independent"][index], results["stratified"][index]
                var_i = independent.var(dim=1).mean().item()
                var_s = stratified.var(dim=1).mean().item()
                print(
                    f"{strategy:<13} {num_masks:>2} {bound:<5} {var_i:>11.5f} {var_s:>11.5f} {var_s / var_i:>11.3f} "
                    f"{independent.mean().item():>12.5f} {stratified.mean().item():>12.5f}"
                )
    relative = math.sqrt(2 / (args.repeats - 1))
    print(f"\nstandard error of one completion's variance: about {relative:.1%} of it (normal approximation)")
    print(f"wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
