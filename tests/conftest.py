import json
import os
import sys
import tempfile
from pathlib import Path

# Trackers write to a scratch folder and never reach a server (trackio reads its folder at import time).
_TRACKERS = tempfile.mkdtemp(prefix="trl-spg-trackers-")
os.environ.setdefault("TRACKIO_DIR", os.path.join(_TRACKERS, "trackio"))
os.environ.setdefault("WANDB_DIR", _TRACKERS)
os.environ["WANDB_MODE"] = "offline"

# Test helpers (tiny models, exact likelihood) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_spg.tiny import SIMPLE_CHAT_TEMPLATE, build_char_tokenizer, build_tiny_diffusion_lm  # noqa: E402


@pytest.fixture
def tiny_tokenizer():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_diffusion_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)


@pytest.fixture
def prompt_dataset():
    return Dataset.from_dict({"prompt": ["12=", "34=", "ab=", "x="] * 2, "target": ["1", "3", "a", "x"] * 2})


@pytest.fixture
def tiny_folder(tmp_path, tiny_model, tiny_tokenizer):
    """A saved tiny model (``tiny``) and a local dataset folder with a ``prompt`` column (``data/train.jsonl``)."""
    tiny_model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"prompt": prompt} for prompt in ["12=", "34=", "ab=", "x="] * 2]
    (data / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return tmp_path
