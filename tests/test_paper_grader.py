"""``task.score(text, example, grader="paper")``: the SPG paper's reference evaluation, item for item.

The fixtures (``tests/fixtures/paper_grader``, see its README) hold hand-written completions with the verdicts the
reference code (facebookresearch/SPG at a1c7120, ``eval/parse_and_get_acc.py``) gave when run on them.
"""

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest

from trl_spg.tasks import countdown, get_task, gsm8k, math500, sudoku
from trl_spg.tasks.base import GRADERS
from trl_spg.tasks.paper_grader import MAX_POWER_BITS, paper_arithmetic, paper_boxed, paper_equivalent

FIXTURES = Path(__file__).parent / "fixtures" / "paper_grader"
TASKS = ("gsm8k", "math500", "countdown", "sudoku")
STRICT = {"gsm8k": gsm8k.score, "math500": math500.score, "countdown": countdown.score, "sudoku": sudoku.score}


def load(name):
    with open(FIXTURES / f"{name}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


ITEMS = [(name, item) for name in TASKS for item in load(name)]


def same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("name", TASKS)
def test_every_task_has_at_least_fifty_reference_verdicts(name):
    items = load(name)
    assert len(items) >= 50 and len({item["id"] for item in items}) == len(items)
    assert {"correct", "total", "prediction"} == set(items[0]["reference"])


@pytest.mark.parametrize(("name", "item"), ITEMS, ids=[item["id"] for _, item in ITEMS])
def test_paper_grader_reproduces_the_reference_verdict(name, item):
    scored = get_task(name).score(item["text"], item["example"], grader="paper")
    reference = item["reference"]
    assert (scored["correct"], scored["total"]) == (reference["correct"], reference["total"]), item["note"]
    assert same(scored["prediction"], reference["prediction"]), item["note"]


@pytest.mark.parametrize("name", TASKS)
def test_strict_is_the_default_and_the_tasks_own_rule(name):
    task = get_task(name)
    assert task.strict_score is STRICT[name] and task.paper_score is not None
    for item in load(name):
        strict = STRICT[name](item["text"], item["example"])
        assert task.score(item["text"], item["example"]) == strict
        assert task.score(item["text"], item["example"], grader="strict") == strict


def test_grader_names_are_checked():
    task = get_task("gsm8k")
    assert GRADERS == ("strict", "paper")
    with pytest.raises(ValueError, match="'strict', 'paper'.*'reference'"):
        task.score("\\boxed{1}", {"question": "q", "answer": "1"}, grader="reference")
    custom = replace(task, name="gsm8k-custom", paper_score=None)
    with pytest.raises(ValueError, match="no paper grader"):
        custom.score("\\boxed{1}", {"question": "q", "answer": "1"}, grader="paper")
    assert custom.score("\\boxed{1}", {"question": "q", "answer": "1"})["correct"] == 1.0


def verdicts(name, text, example):
    task = get_task(name)
    return task.score(text, example)["correct"], task.score(text, example, grader="paper")["correct"]


PAD = "<|eot_id|>" + "<|endoftext|>" * 8


def test_gsm8k_commas_and_negative_gold_differ():
    gold_1300 = {"question": "q", "answer": "1,300"}
    assert verdicts("gsm8k", "<answer>\n\\boxed{1,300}\n</answer>" + PAD, gold_1300) == (1.0, 0.0)  # reads 1
    assert get_task("gsm8k").score("\\boxed{1,300}", gold_1300, grader="paper")["prediction"] == 1.0
    assert verdicts("gsm8k", "<answer>\n1,300\n</answer>" + PAD, gold_1300) == (1.0, 0.0)  # reads 300
    # The reference's gold pattern has no minus sign: a negative gold answer is never matched.
    assert verdicts("gsm8k", "<answer>\n\\boxed{-5}\n</answer>" + PAD, {"question": "q", "answer": "-5"}) == (1.0, 0.0)
    assert verdicts("gsm8k", "<answer>\n\\boxed{1300}\n</answer>" + PAD, gold_1300) == (1.0, 1.0)


def test_math500_string_normaliser_instead_of_math_verify():
    eighth = {"problem": "p", "answer": "\\frac{1}{8}"}
    assert verdicts("math500", "<answer>\n\\boxed{\\frac{3}{24}}\n</answer>" + PAD, eighth) == (1.0, 0.0)
    assert verdicts("math500", "<answer>\n\\boxed{\\frac18}\n</answer>" + PAD, eighth) == (1.0, 1.0)
    assert verdicts("math500", "\\boxed{0.25}", {"problem": "p", "answer": "\\frac{1}{4}"}) == (1.0, 0.0)
    # Without a box the whole text is the answer: tags followed by special tokens never match.
    assert verdicts("math500", "<answer>\n5\n</answer>" + PAD, {"problem": "p", "answer": "5"}) == (1.0, 0.0)
    assert paper_equivalent("0.5", "\\frac{1}{2}") and paper_equivalent("x = 3", "3")
    assert not paper_equivalent("x/2", "\\frac{x}{2}") and paper_equivalent("x/2", "x/2")  # raw comparison


def test_countdown_reads_the_whole_text_without_a_box():
    example = {"nums": [3, 5, 7], "target": 38}
    assert verdicts("countdown", "<answer>\n3 + 5 * 7\n</answer>" + PAD, example) == (1.0, 0.0)
    assert verdicts("countdown", "So 3 + 5 * 7 = 38, done." + PAD, example) == (0.0, 1.0)
    assert verdicts("countdown", "<answer>\\boxed{3 + 5 * 7}</answer>" + PAD, example) == (1.0, 1.0)
    # An unclosed box is the only case that falls back to the answer tags.
    assert verdicts("countdown", "<answer>3+5*7</answer> \\boxed{3+5" + PAD, example) == (1.0, 1.0)
    # Python's arithmetic: ** and // count.
    assert verdicts("countdown", "\\boxed{2**3 - 5}", {"nums": [2, 3, 5], "target": 3}) == (0.0, 1.0)


def test_sudoku_tries_five_patterns():
    example = {"puzzle": "3014002020004130", "solution": "3214142323414132"}
    grid = example["solution"]
    assert verdicts("sudoku", "<answer>\n" + grid + "\n" + PAD, example) == (0.0, 8.0)  # unclosed tag
    assert verdicts("sudoku", "The grid is " + grid + "." + PAD, example) == (0.0, 8.0)  # bare 16 digits
    assert verdicts("sudoku", "<answer>1111111111111111</answer><answer>" + grid + "</answer>", example) == (8.0, 2.0)
    assert verdicts("sudoku", "<answer>[3,2,1,4,1,4,2,3,2,3,4,1,4,1,3,2]</answer>", example) == (8.0, 0.0)
    assert verdicts("sudoku", "<answer>\n" + grid + "\n</answer>" + PAD, example) == (8.0, 8.0)


def test_paper_boxed_cases():
    assert paper_boxed("\\boxed{1} and \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert paper_boxed("\\fbox{7}") == "\\fbox{7}"
    assert paper_boxed("\\boxed 5$ more \\boxed{6}") == "5"
    assert paper_boxed("\\boxed{unclosed") is None
    assert paper_boxed("nothing") == "nothing"


def test_paper_arithmetic_is_python_arithmetic_without_eval():
    assert paper_arithmetic("2**3**2") == 512 and paper_arithmetic("7 // 2") == 3 and paper_arithmetic("7/2") == 3.5
    assert paper_arithmetic("(-8)**0.5") == (-8) ** 0.5
    for bad in ("1/0", "007", "(3)(5)", "3 +\n5", "1e3", "__import__('os')", "...", "2**10000.5", "(" * 250 + "1"):
        assert paper_arithmetic(bad) == math.inf, bad
    started = time.perf_counter()
    assert paper_arithmetic("99**99**99") == math.inf  # beyond MAX_POWER_BITS: an error, at once
    assert paper_arithmetic(f"2**{MAX_POWER_BITS - 8}") == 2 ** (MAX_POWER_BITS - 8)
    assert time.perf_counter() - started < 5
