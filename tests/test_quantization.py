"""QLoRA through the command line (`--load_in_4bit --use_peft`, TRL's `get_quantization_config`) on a CPU.

bitsandbytes' CPU backend runs NF4 with the torch this project pins; its packed CPU kernel needs every quantised
layer's input size to be a multiple of the quantisation block (64), hence a tiny model of width 64.
"""

from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes", reason='4-bit loading is an extra: pip install -e ".[quantization]"')

from test_cli import COMMON, SMALL  # noqa: E402

from trl_spg.scripts.spg import main  # noqa: E402
from trl_spg.tiny import build_tiny_diffusion_lm  # noqa: E402

pytestmark = pytest.mark.slow


def test_qlora_trains_adapters_on_a_frozen_nf4_base(tiny_folder, tiny_tokenizer, monkeypatch):
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = tiny_folder / "tiny64"
    build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=64, num_layers=2, num_heads=2, seed=0).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    monkeypatch.chdir(Path(__file__).parent)  # `cli_rewards.digit_count` resolves from here
    out = tiny_folder / "out"
    args = ["--model_name_or_path", str(folder), "--dataset_name", str(tiny_folder / "data"), "--load_in_4bit"]
    args += ["--reward_funcs", "cli_rewards.digit_count", "--output_dir", str(out), "--dtype", "float32"]
    args += ["--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "all-linear"]
    trainer = main(args + COMMON + SMALL)
    model = trainer.model
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every projection of both decoder layers is NF4
    assert all(layer.weight.quant_type == "nf4" and layer.weight.dtype == torch.uint8 for layer in layers)
    assert not any(p.requires_grad for name, p in model.named_parameters() if "lora_" not in name)
    assert trainer.state.global_step == 2

    # The adapter moved away from its initialisation (lora_B starts at zero), was saved, and loads back with PEFT.
    saved = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), out)
    lora_b = {name: p for name, p in saved.named_parameters() if "lora_B" in name}
    assert lora_b and all(p.abs().max() > 0 for p in lora_b.values())
    trained = {name: p for name, p in model.named_parameters() if "lora_B" in name}
    for name, value in lora_b.items():
        assert torch.equal(value, trained[name].detach().cpu()), name
    assert (out / "README.md").is_file()
