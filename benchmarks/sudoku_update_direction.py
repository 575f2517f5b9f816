"""Where does one SPG update point? Cosine with the supervised update, and what one step does to held-out accuracy.

On the warm-started tiny Sudoku policy this draws many rollouts (so Monte Carlo noise is small), computes the SPG
loss gradient for several bound / masking settings side by side, and compares each with the gradient of the
masked-diffusion ELBO of the *true* solutions of the same prompts (the supervised direction, which is known to
raise accuracy). With ``--step_lr`` it also applies one Adam-like step ``theta - lr * sign(grad)`` along each
direction and reports the change in greedy held-out accuracy.

    python benchmarks/sudoku_update_direction.py                      # tiny default warm start, 128 x 16 rollouts
    python benchmarks/sudoku_update_direction.py --step_lr 3e-4       # plus the one-step accuracy change

Settings are ``negative_bound:p_mask_prompt:min_mask_ratio``. Figures are in docs/sudoku.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trl_spg.decoding import DecodingConfig  # noqa: E402
from trl_spg.evaluation import generate_and_score, summarize  # noqa: E402
from trl_spg.objective import SPGObjective  # noqa: E402
from trl_spg.sampler import completion_mask_from_ids, diffusion_generate  # noqa: E402
from trl_spg.tasks.sudoku import TASK, compact_completion, compact_prompt, sudoku_reward, sudoku_split  # noqa: E402
from trl_spg.tiny.sudoku import TINY_COMPLETION_LENGTH, TinySudokuSpec, tiny_sudoku_model  # noqa: E402

DEFAULT_SETTINGS = ["mix:0.15:0.3", "mix:0:0.3", "mix:0:0", "elbo:0.15:0.3", "elbo:0:0.3", "none:0:0.3"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm_start_steps", type=int, default=TinySudokuSpec.sft_steps)
    parser.add_argument("--seed", type=int, default=42, help="Warm-start seed (the example uses its training seed).")
    parser.add_argument("--prompts", type=int, default=128, help="Training prompts the rollouts are drawn for.")
    parser.add_argument("--generations", type=int, default=16, help="Rollouts per prompt (one group each).")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    parser.add_argument("--num_mc_masks", type=int, default=4)
    parser.add_argument("--eubo_beta", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--scale_rewards", choices=["none", "group"], default="none", help="Advantages as SPG ('none') or GRPO."
    )
    parser.add_argument("--step_lr", type=float, default=0.0, help="Also measure one sign step of this size.")
    parser.add_argument("--chunk", type=int, default=256, help="Rollouts per forward/backward pass.")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--output", default=None, help="Write the results as JSON here.")
    return parser.parse_args(argv)


def encode(tokenizer, texts, **kwargs):
    return tokenizer(texts, return_tensors="pt", add_special_tokens=False, **kwargs)


def loss_gradient(model, batches, loss_fn) -> torch.Tensor:
    """Gradient of ``sum_b loss_fn(*batch_b)`` as one flat vector (the model's own gradients are cleared first)."""
    model.zero_grad(set_to_none=True)
    model.train()
    for batch in batches:
        loss_fn(*batch).backward()
    model.eval()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def main(argv=None) -> dict:
    args = parse_args(argv)
    train_rows, test_rows = sudoku_split()
    spec = TinySudokuSpec(sft_steps=args.warm_start_steps, seed=args.seed)
    model, tokenizer = tiny_sudoku_model(train_rows, spec, args.cache_dir)
    model.eval()
    mask_id, eos_id = tokenizer.mask_token_id, tokenizer.eos_token_id
    width = TINY_COMPLETION_LENGTH

    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(1))[: args.prompts].tolist()
    rows = [train_rows[i] for i in order]
    prompts = encode(tokenizer, [compact_prompt(r["puzzle"]) for r in rows], padding=True, padding_side="left")
    group = args.generations
    prompt_ids = prompts["input_ids"].repeat_interleave(group, 0)
    prompt_mask = prompts["attention_mask"].repeat_interleave(group, 0)

    started = time.perf_counter()
    with torch.no_grad():
        completion_ids = torch.cat(
            [
                diffusion_generate(
                    model,
                    prompt_ids[s : s + 512],
                    prompt_mask[s : s + 512],
                    mask_token_id=mask_id,
                    gen_length=width,
                    block_length=width,
                    steps=width // 2,
                    temperature=args.temperature,
                    generator=torch.Generator().manual_seed(123 + s),
                )
                for s in range(0, len(prompt_ids), 512)
            ]
        )
    completion_mask = completion_mask_from_ids(completion_ids, eos_id)
    texts = [
        tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(completion_ids, completion_mask)
    ]
    rewards = torch.tensor(
        sudoku_reward(
            texts,
            puzzle=[r["puzzle"] for r in rows for _ in range(group)],
            solution=[r["solution"] for r in rows for _ in range(group)],
        )
    ).view(-1, group)
    # Group-centred advantages, as SPG (`scale_rewards="none"`) computes them; `--scale_rewards group` divides by the
    # group's standard deviation as GRPO's default does.
    advantages = rewards - rewards.mean(1, keepdim=True)
    if args.scale_rewards == "group":
        advantages = advantages / (rewards.std(1, keepdim=True) + 1e-4)
    advantages = advantages.flatten()
    print(
        f"{len(texts)} rollouts, mean reward {rewards.mean():.4f} ({time.perf_counter() - started:.0f} s)", flush=True
    )

    chunks = [slice(s, s + args.chunk) for s in range(0, len(completion_ids), args.chunk)]
    total = len(completion_ids)

    def spg_gradient(negative: str, p_mask_prompt: float, min_mask_ratio: float) -> torch.Tensor:
        objective = SPGObjective(
            negative_bound=negative,
            eubo_beta=args.eubo_beta,
            num_mc_masks=args.num_mc_masks,
            block_length=width,
            min_mask_ratio=min_mask_ratio,
            p_mask_prompt=p_mask_prompt,
        )
        generator = torch.Generator().manual_seed(5)
        rollouts = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "advantages": advantages,
        }

        def loss(sl):
            chunk = {key: value[sl] for key, value in rollouts.items()}
            output = objective.loss(model, chunk, mask_token_id=mask_id, generator=generator)
            return output.loss * (len(chunk["advantages"]) / total)

        return loss_gradient(model, [(sl,) for sl in chunks], loss)

    # Supervised direction: the ELBO of the true solutions (advantage 1, uniformly random masks, many of them).
    solution_ids = encode(tokenizer, [compact_completion(r["solution"]) for r in rows])["input_ids"]
    solution_ids = torch.cat(
        [solution_ids, solution_ids.new_full((len(rows), width - solution_ids.shape[1]), eos_id)], 1
    )
    solution_mask = completion_mask_from_ids(solution_ids, eos_id)

    supervised_objective = SPGObjective(
        negative_bound="elbo", masking_strategy="random", num_mc_masks=16, p_mask_prompt=0.0
    )
    solutions = {
        "prompt_ids": prompts["input_ids"],
        "prompt_mask": prompts["attention_mask"],
        "completion_ids": solution_ids,
        "completion_mask": solution_mask,
        "advantages": torch.ones(len(rows)),
    }

    def sft_loss(generator):
        return supervised_objective.loss(model, solutions, mask_token_id=mask_id, generator=generator).loss

    supervised = loss_gradient(model, [(torch.Generator().manual_seed(6),)], sft_loss)

    held_out_set = TASK.dataset("test", prompt_style="compact", data=test_rows)
    greedy = DecodingConfig(gen_length=width, block_length=width, steps=width // 2)

    def held_out() -> float:
        return summarize(generate_and_score(TASK, model, tokenizer, held_out_set, greedy, batch_size=128))["accuracy"]

    original = [p.detach().clone() for p in model.parameters()]

    def sign_step_gain(gradient: torch.Tensor) -> float:
        offset = 0
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), original):
                g = gradient[offset : offset + p.numel()].view_as(p)
                p.copy_(p0 - args.step_lr * g.sign())
                offset += p.numel()
        gain = held_out() - base_accuracy
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), original):
                p.copy_(p0)
        return gain

    base_accuracy = held_out() if args.step_lr else None
    results = {"rollouts": total, "mean_reward": rewards.mean().item(), "held_out": base_accuracy, "settings": {}}
    if args.step_lr:
        results["supervised_step_gain"] = sign_step_gain(supervised)
        print(f"held-out {base_accuracy:.4f}; one supervised step: {results['supervised_step_gain']:+.4f}", flush=True)
    print(f"{'setting':>16} {'cosine':>8} {'sign agr.':>9} {'step gain':>9}", flush=True)
    for setting in args.settings:
        negative, p_mask_prompt, min_mask_ratio = setting.split(":")
        gradient = spg_gradient(negative, float(p_mask_prompt), float(min_mask_ratio))
        entry = {
            "cosine": torch.nn.functional.cosine_similarity(gradient, supervised, 0).item(),
            "sign_agreement": (gradient.sign() * supervised.sign()).mean().item(),
        }
        if args.step_lr:
            entry["step_gain"] = sign_step_gain(gradient)
        results["settings"][setting] = entry
        gain = f"{entry['step_gain']:+9.4f}" if args.step_lr else f"{'-':>9}"
        print(f"{setting:>16} {entry['cosine']:8.3f} {entry['sign_agreement']:9.3f} {gain}", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
