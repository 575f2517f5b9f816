"""Cost of SPG's likelihood estimator relative to a plain log-softmax over the same masked inputs.

    time ratio   = forward+backward of the SPG loss with ``--masks`` Monte Carlo masks per completion
                   (`trl_spg.scoring.masked_token_logprobs` -> `spg_bounds` -> `spg_loss`)
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

The pre-optimisation estimator (``gather - logsumexp`` through autograd, `_reference.reference_token_logprobs`)
is measured beside them, and the SPG bounds and gradients of the new and old estimator are compared on the same
masks.

    python benchmarks/estimator.py                # CPU setup
    python benchmarks/estimator.py --preset gpu   # hidden 1024, 16 layers, vocab 126464, bf16 on cuda
"""

from __future__ import annotations

import torch
from _common import PeakMemory, build_model, describe, interleaved_medians, parser, resolve
from _reference import reference_token_logprobs

from trl_spg.bounds import spg_bounds, spg_loss
from trl_spg.masking import apply_masks, sample_masks
from trl_spg.modeling import forward_logits
from trl_spg.scoring import masked_token_logprobs


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
    prompt_mask, completion_mask = torch.ones_like(prompt_ids), torch.ones_like(completion_ids)
    masks = sample_masks(
        prompt_mask.cpu(),
        completion_mask.cpu(),
        num_masks=masks_per,
        strategy="block_random",
        block_length=args.block,
        p_mask_prompt=0.15,
        generator=gen,
    )
    masks.noised, masks.scored = masks.noised.to(device), masks.scored.to(device)
    advantages = torch.randn(batch, generator=gen).to(device)
    lengths = completion_mask.sum(-1)

    # The same masked inputs, laid out as `masked_token_logprobs` lays them out, for the plain baseline.
    noisy = apply_masks(torch.cat([prompt_ids, completion_ids], 1), masks.noised, mask_id).flatten(0, 1)
    attention = torch.ones_like(noisy)
    keep = torch.arange(args.prompt, args.prompt + args.gen, device=device)
    targets = completion_ids.repeat_interleave(masks_per, dim=0)
    weights = masks.scored.flatten(0, 1).float() * advantages.repeat_interleave(masks_per)[:, None]

    def spg(token_logps):
        bounds = spg_bounds(token_logps, masks.scored, lengths, advantages, negative="mix", beta=1.5, mix_weight=0.5)
        return spg_loss(advantages, bounds["selected"], lengths), bounds

    def new():
        token_logps = masked_token_logprobs(
            model, prompt_ids, prompt_mask, completion_ids, masks, mask_id, chunk_size=args.chunk_size
        )
        loss, bounds = spg(token_logps)
        loss.backward()
        return bounds

    def old():
        logits = forward_logits(model, noisy, attention, keep=keep)
        loss, bounds = spg(reference_token_logprobs(logits, targets).reshape(batch, masks_per, -1))
        del logits
        loss.backward()
        return bounds

    def plain():
        logps = forward_logits(model, noisy, attention, keep=keep).float().log_softmax(-1)
        logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        (-(weights * logps).sum() / weights.numel()).backward()

    variants = {"plain": plain, "new": new, "old": old}

    def fresh(fn):
        def run():
            model.zero_grad(set_to_none=True)
            return fn()

        return run

    # Same masks, same model: the new estimator must give the old one's bounds and gradients.
    grads = {}
    for name in ("new", "old"):
        bounds = fresh(variants[name])()
        grads[name] = (bounds, {n: q.grad.detach().clone() for n, q in model.named_parameters()})
    bound_diff = max(
        (grads["new"][0][key] - grads["old"][0][key]).abs().max().item() for key in ("elbo", "eubo", "selected")
    )
    grad_diff = max(
        (
            (grads["new"][1][n] - grads["old"][1][n]).abs().max() / grads["old"][1][n].abs().max().clamp(min=1e-30)
        ).item()
        for n in grads["old"][1]
    )
    del grads

    logits_shape = (batch * masks_per, args.gen, args.vocab)
    fp32_logits = batch * masks_per * args.gen * args.vocab * 4
    print(f"logits of the completion positions: {logits_shape} = {fp32_logits / 2**20:.1f} MiB in float32")
    print(f"new vs old estimator, same masks: max |bound difference| {bound_diff:.2e}, ", end="")
    print(f"max relative gradient difference {grad_diff:.2e}")
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

    print(f"{'variant':<42} {'fwd+bwd ms':>10} {'time ratio':>10} {'estimator peak':>14} {'whole peak':>10}")
    labels = {
        "plain": "plain log_softmax + gather (baseline)",
        "new": f"SPG estimator, {masks_per} masks (trl_spg)",
        "old": f"SPG estimator, {masks_per} masks (old)",
    }
    for name in ("plain", "new", "old"):
        ratio = medians[name] / medians["plain"]
        est, whole = memory[name]
        print(f"{labels[name]:<42} {1e3 * medians[name]:>10.1f} {ratio:>10.3f} {est:>13.3f}x {whole:>9.3f}x")
    print("(memory in units of one float32 logits tensor of the completion positions)")


if __name__ == "__main__":
    main()
