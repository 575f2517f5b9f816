# Copyright the trl_spg authors. Licensed under the Apache License, Version 2.0.
"""Train a masked diffusion LM on 4x4 Sudoku with SPG, evaluating held-out accuracy before and after.

With no arguments it runs on a CPU: the built-in tiny bidirectional Llama is warm-started by masked-diffusion SFT
(cached after the first run), evaluated greedily on 1024 held-out puzzles, trained 160 SPG steps on the training
puzzles and evaluated again; results go to `outputs/sudoku-tiny-spg/`:

    accelerate launch examples/train_sudoku.py

It is `trl-spg --task sudoku --model_name_or_path tiny` (`trl_spg.scripts.spg`): every flag of that command works
here (`--algorithm d1` or `wd1`, `--max_steps`, `--eval_every`, `--use_peft`, `--config file.yaml`, ...), and
`--model_name_or_path` another model trains that model on Sudoku instead.
"""

import sys

from trl_spg.scripts.spg import main

if __name__ == "__main__":
    main(["--task", "sudoku", "--model_name_or_path", "tiny", *sys.argv[1:]])
