"""Cost of SPG's likelihood estimator relative to a plain log-softmax over the same masked inputs.

    time ratio   = forward+backward of the SPG loss with ``--masks`` Monte Carlo masks per completion
                   (`trl_spg.objective.SPGObjective.loss`)
                 / forward+backward of the same ``batch x masks`` masked inputs through the same model with one
                   plain ``logits.float().log_softmax(-1).gather(...)`` and a weighted sum
    memory ratio = peak memory of the estimator / bytes of one float32 logits tensor of the completion positions
                   (batch x masks, gen, vocab)

The estimator's peak memory is taken from the moment the model has returned the logits until the gradient with
respect to the logits exists: the largest amount allocated in that window, minus what was allocated just before
the logits (model parameters, inputs and the model's own activations, which both variants share). It includes
the logits themselves, so 1.0 means "nothing but the logits". The peak of the whole forward+backward (model
activations and parameter gradients included) is printed too. See `_common.PeakMemory` for how memory is measured
on CPU (torch.profiler) and on CUDA (allocator statistics).

The same loss with two other log-prob kernels is measured beside it: TRL's ``selective_log_softmax`` and the
pre-optimisation ``gather - logsumexp`` through autograd (`_reference.reference_token_logprobs`); their SPG bounds
and gradients are compared with ours on the same masks.

    python benchmarks/estimator.py                # CPU setup
    python benchmarks/estimator.py --preset gpu   # hidden 1024, 16 layers, vocab 126464, bf16 on cuda
"""

from __future__ import annotations

import torch
from _common import PeakMemory, build_model, describe, interleaved_medians, parser, resolve
from _reference import reference_token_logprobs
from trl.trainer.utils import selective_log_softmax

import trl_spg.scoring
from trl_spg.masking import apply_masks
from trl_spg.modeling import forward_logits
from trl_spg.objective import SPGObjective


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--masks", type=int, default=2, help="Monte Carlo masks per completion")
    p.add_argument("--chunk-size", type=int, help="rows per chunk of the new estimator (default: automatic)")
    args = resolve(p.parse_args())
    describe(args, {"masks": args.masks, "chunk_size": args.chunk_size or "auto"})
    device, batch, masks_per = args.device, args.batch, args.masks

    model = build_model(args, train=True)
    mask_id = args.vocab - 1
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    prompt_ids = torch.randint(2, mask_id, (batch, args.prompt), generator=gen).to(device)
    completion_ids = torch.randint(2, mask_id, (batch, args.gen), generator=gen).to(device)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": torch.ones_like(completion_ids),
        "advantages": torch.randn(batch, generator=gen).to(device),
    }
    objective = SPGObjective(num_mc_masks=masks_per, block_length=args.block, p_mask_prompt=0.15)

    def mask_generator():  # every variant sees the same masks
        return torch.Generator(device="cpu").manual_seed(args.seed + 1)

    # The same masked inputs, laid out as `masked_token_logprobs` lays them out, for the plain baseline.
    masks = objective.sample_masks(inputs["prompt_mask"], inputs["completion_mask"], mask_generator())
    noisy = apply_masks(torch.cat([prompt_ids, completion_ids], 1), masks.noised, mask_id).flatten(0, 1)
    attention = torch.ones_like(noisy)
    keep = torch.arange(args.prompt, args.prompt + args.gen, device=device)
    targets = completion_ids.repeat_interleave(masks_per, dim=0)
    weights = masks.scored.flatten(0, 1).float() * inputs["advantages"].repeat_interleave(masks_per)[:, None]

    kernels = {
        "new": trl_spg.scoring.token_logprobs,
        "trl": lambda logits, targets, **_: selective_log_softmax(logits, targets),
        "old": lambda logits, targets, **_: reference_token_logprobs(logits, targets),
    }

    def spg(kernel):
        def run():
            trl_spg.scoring.token_logprobs = kernels[kernel]
            try:
                output = objective.loss(
                    model, inputs, mask_token_id=mask_id, generator=mask_generator(), chunk_size=args.chunk_size
                )
            finally:
                trl_spg.scoring.token_logprobs = kernels["new"]
            output.loss.backward()
            return output.bounds

        return run

    def plain():
        logps = forward_logits(model, noisy, attention, keep=keep).float().log_softmax(-1)
        logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        (-(weights * logps).sum() / weights.numel()).backward()

    variants = {"plain": plain, "new": spg("new"), "trl": spg("trl"), "old": spg("old")}

    def fresh(fn):
        def run():
            model.zero_grad(set_to_none=True)
            return fn()

        return run

    # Same masks, same model: every kernel must give the same bounds and gradients.
    results = {}
    for name in ("new", "trl", "old"):
        bounds = fresh(variants[name])()
        results[name] = (bounds, {n: q.grad.detach().clone() for n, q in model.named_parameters()})
    for name in ("trl", "old"):
        bound_diff = max(
            (results["new"][0][key] - results[name][0][key]).abs().max().item() for key in ("elbo", "eubo", "selected")
        )
        grad_diff = max(
            (
                (results["new"][1][n] - results[name][1][n]).abs().max()
                / results[name][1][n].abs().max().clamp(min=1e-30)
            ).item()
            for n in results[name][1]
        )
        print(f"new vs {name} kernel, same masks: max |bound difference| {bound_diff:.2e}, ", end="")
        print(f"max relative gradient difference {grad_diff:.2e}")
    del results

    logits_shape = (batch * masks_per, args.gen, args.vocab)
    fp32_logits = batch * masks_per * args.gen * args.vocab * 4
    print(f"logits of the completion positions: {logits_shape} = {fp32_logits / 2**20:.1f} MiB in float32")
    print()

    medians = interleaved_medians({name: fresh(fn) for name, fn in variants.items()}, args.repeats, device)

    memory = {}
    for name, fn in variants.items():
        model.zero_grad(set_to_none=True)
        with PeakMemory(device) as meter:
            marks = {}

            def on_logits(module, inputs, output, meter=meter, marks=marks):
                marks["logits"] = meter.mark()
                marks["logits_bytes"] = output.logits.numel() * output.logits.element_size()
                output.logits.register_hook(lambda grad: marks.__setitem__("grad", meter.mark()))

            hook = model.register_forward_hook(on_logits)
            try:
                fn()
            finally:
                hook.remove()
        before_logits = meter.at(marks["logits"]) - marks["logits_bytes"]
        estimator = meter.peak_between(marks["logits"], marks["grad"]) - before_logits
        memory[name] = (estimator / fp32_logits, meter.total_peak / fp32_logits)

    print(f"{'variant':<46} {'fwd+bwd ms':>10} {'time ratio':>10} {'estimator peak':>14} {'whole peak':>10}")
    labels = {
        "plain": "plain log_softmax + gather (baseline)",
        "new": f"SPG estimator, {masks_per} masks (trl_spg kernel)",
        "trl": f"SPG estimator, {masks_per} masks (TRL selective)",
        "old": f"SPG estimator, {masks_per} masks (old kernel)",
    }
    for name in ("plain", "new", "trl", "old"):
        ratio = medians[name] / medians["plain"]
        est, whole = memory[name]
        print(f"{labels[name]:<46} {1e3 * medians[name]:>10.1f} {ratio:>10.3f} {est:>13.3f}x {whole:>9.3f}x")
    print("(memory in units of one float32 logits tensor of the completion positions)")


if __name__ == "__main__":
    main()
