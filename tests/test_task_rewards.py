"""Reward functions and evaluation scorers of every task, with exact expected values.

The GSM8K, Countdown and Sudoku cases carry the values the reference implementation (``spg/reward_func.py`` of the
SPG code release) gives on the same completions.
"""

import time

import pytest

from trl_spg.tasks import get_task
from trl_spg.tasks.countdown import countdown_reward, evaluate_expression
from trl_spg.tasks.formats import last_boxed, xml_count
from trl_spg.tasks.math500 import correctness_reward, equivalent, format_reward
from trl_spg.tasks.paper_grader import paper_equivalent

# --- GSM8K: (completion, [xml count, soft format, strict format, integer, correctness]) with gold "42" ----------------

GSM8K_CASES = [
    ("<reasoning>\nSix times seven is 42.\n</reasoning>\n<answer>\n42\n</answer>\n", [0.487, 0.0, 0.5, 0.5, 2.0]),
    ("<reasoning>\nSix times seven is 42.\n</reasoning>\n<answer>\n42\n</answer>", [0.489, 0.0, 0.0, 0.5, 2.0]),
    ("<reasoning>\nSix times seven\nis 42.\n</reasoning>\n<answer>\n42\n</answer>\n", [0.487, 0.0, 0.0, 0.5, 2.0]),
    ("<reasoning>6*7=42</reasoning> <answer>42</answer>", [0.0, 0.5, 0.0, 0.5, 2.0]),
    ("<reasoning>\nSix times seven is 41.\n</reasoning>\n<answer>\n41\n</answer>\n", [0.487, 0.0, 0.5, 0.5, 0.0]),
    (
        "<reasoning>\nSix times seven is 42.\n</reasoning>\n<answer>\n42\n</answer>\nDone, I hope.",
        [0.461, 0.0, 0.0, 0.5, 2.0],
    ),
    ("The answer is 42.", [0.0, 0.0, 0.0, 0.0, 0.0]),
    ("", [0.0, 0.0, 0.0, 0.0, 0.0]),
    ("<reasoning>\nok\n</reasoning>\n<answer>\n42.0\n</answer>\n", [0.485, 0.0, 0.5, 0.0, 0.0]),
    ("<answer>\n42\n</answer>\n<answer>\n43\n</answer>", [0.113, 0.0, 0.0, 0.5, 0.0]),
    ("<reasoning>\n<reasoning>\nx\n</reasoning>\n<answer>\n42\n</answer>\n", [0.362, 0.0, 0.0, 0.5, 2.0]),
    ("<reasoning>\nx\n</reasoning>\n<answer>\n4²\n</answer>\n", [0.487, 0.0, 0.5, 0.5, 0.0]),
]


@pytest.mark.parametrize("conversational", [False, True])
def test_gsm8k_rewards_match_the_reference(conversational):
    task = get_task("gsm8k")
    texts = [text for text, _ in GSM8K_CASES]
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    columns = {"answer": ["42"] * len(texts), "question": ["q"] * len(texts), "prompts": ["p"] * len(texts)}
    got = [func(completions, **columns) for func in task.reward_funcs]
    for index, (_, expected) in enumerate(GSM8K_CASES):
        assert [values[index] for values in got] == pytest.approx(expected, abs=1e-12), texts[index]


def test_xml_count_penalises_trailing_text_per_character():
    base = "<reasoning>\nr\n</reasoning>\n<answer>\n7\n</answer>"
    assert xml_count(base) == pytest.approx(0.5 - 0.011 + 0.001)
    assert xml_count(base + "\nabc") == pytest.approx(xml_count(base) - 2 * 0.004)


GSM8K_PARSE_CASES = [
    ("<reasoning>\nx\n</reasoning>\n<answer>\n\\boxed{22}\n</answer>", 22.0, True),
    ("so \\boxed{1,022} dollars", 1022.0, False),  # thousands separators are read as such
    ("\\boxed{...} then \\boxed{The total is 22 apples}", 22.0, True),  # first boxed holding a number
    ("<answer>\nabout 21 or 22\n</answer>", 22.0, True),  # last number inside the answer tags
    ("We get 24 apples, minus 2 is 22", 22.0, True),  # no tags: the last number of the text
    ("<answer>\n22.0\n</answer>", 22.0, True),
    ("<answer>\n-22\n</answer>", -22.0, False),
    ("no number at all", None, False),
    ("", None, False),
]


@pytest.mark.parametrize(("completion", "prediction", "correct"), GSM8K_PARSE_CASES)
def test_gsm8k_evaluation_parsing(completion, prediction, correct):
    scored = get_task("gsm8k").score(completion, {"question": "q", "answer": "22"})
    assert scored == {"prediction": prediction, "correct": float(correct), "total": 1.0}


# --- Countdown ---------------------------------------------------------------------------------------------------------

COUNTDOWN_CASES = [  # (completion, nums, target, reference reward, our reward)
    ("<answer>3*5+7</answer>", [3, 5, 7], 22, 1.0, 1.0),
    ("<reasoning>\nmultiply first\n</reasoning>\n<answer>\n 3 * 5 + 7 \n</answer>", [3, 5, 7], 22, 1.0, 1.0),
    ("<answer>\n(7 + 5) * 3\n</answer>", [3, 5, 7], 22, 0.1, 0.1),
    ("<answer>3*5+8</answer>", [3, 5, 7], 22, 0.1, 0.1),
    ("<answer>3*5+7+7</answer>", [3, 5, 7], 22, 0.1, 0.1),
    ("3*5+7", [3, 5, 7], 22, 0.0, 0.0),
    ("", [3, 5, 7], 22, 0.0, 0.0),
    ("<answer>3*5+7</answer> on second thought <answer>7+5+3</answer>", [3, 5, 7], 22, 0.1, 0.1),
    ("<answer>(1/3)*3</answer>", [1, 3, 3], 1, 1.0, 1.0),
    ("<answer>-5+9-2</answer>", [2, 5, 9], 2, 1.0, 1.0),
    ("<answer>3.0*5+7</answer>", [3, 5, 7], 22, 0.1, 0.1),
    ("<answer>100/(7-3)</answer>", [100, 7, 3], 25, 1.0, 1.0),
    ("<answer>100/(7-3)</answer>", [100, 7, 3], 26, 0.1, 0.1),
    # Not a valid expression: the reference pays 0.1 for anything in answer tags, we pay nothing.
    ("<answer></answer>", [3, 5, 7], 22, 0.1, 0.0),
    ("<answer>3/(5-5)</answer>", [3, 5, 5], 3, 0.1, 0.0),
    ("<answer>__import__('os').system('ls')</answer>", [3, 5, 7], 22, 0.1, 0.0),
    ("<answer>3*5+7=22</answer>", [3, 5, 7], 22, 0.1, 0.0),
    ("<answer>(3*5+7</answer>", [3, 5, 7], 22, 0.1, 0.0),
]


@pytest.mark.parametrize("conversational", [False, True])
def test_countdown_reward_values(conversational):
    texts = [case[0] for case in COUNTDOWN_CASES]
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    rewards = countdown_reward(
        completions,
        target=[case[2] for case in COUNTDOWN_CASES],
        nums=[case[1] for case in COUNTDOWN_CASES],
        prompts=None,
    )
    assert rewards == [case[4] for case in COUNTDOWN_CASES]


@pytest.mark.parametrize(
    "expression",
    [
        "9**9**9",
        "9**9",
        "2**3",
        "8//3",
        "7//2",
        "(" * 5000 + "1" + ")" * 5000,
        "(" * 1000 + "1" + ")" * 1000,
        "(" * 33 + "1" + ")" * 33,
        "-" * 33 + "1",
        "(" * 16 + "-" * 17 + "1" + ")" * 16,
        "-" * 100 + "1",
        "1" * 5000,
        "99999999999999*99999999999999",
        "+".join(["9"] * 200),
        "1e9",
        "1e5",
        "1E3",
        "1_000",
        "0x10",
        "1j",
        "1234567890123",
        "123456.1234567",
        " " + "+".join(["1"] * 150),  # 300 characters
        "__import__('os')",
        "~1",
        "1 % 2",
        "1 if 1 else 2",
        "(1, 2)",
        "[1]",
        "2(3)",
        "(1)(2)",
        "1 .5",
        "1.2.3",
        "2* *3",
        "2/ /3",
        "1\\\n+2",
        "abs(-3)",
        "(1+2",
        "1+2)",
        "3/(5-5)",
        "1/0",
        "0*(1/0)",
        "4 5",
        "",
        "()",
    ],
)
def test_malformed_or_huge_expressions_are_rejected_quickly(expression):
    start = time.perf_counter()
    assert evaluate_expression(expression) is None
    assert countdown_reward([f"<answer>{expression}</answer>"], target=[1], nums=[[9, 9, 9]]) == [0.0]
    assert time.perf_counter() - start < 0.05


def test_expression_evaluation_is_exact_and_follows_precedence():
    from fractions import Fraction

    assert evaluate_expression("3 + 5 * 7") == 38
    assert evaluate_expression("(3 + 5) * 7") == 56
    assert evaluate_expression("100 / (7 - 3)") == 25
    assert evaluate_expression("1 / 3") == Fraction(1, 3)
    assert evaluate_expression("8 - 3 - 2") == 3 and evaluate_expression("16 / 4 / 2") == 2
    assert evaluate_expression("-(3 - 5) * +2") == 4
    assert evaluate_expression(" 2.5 * 2 ") == 5


def test_expression_evaluation_accepts_what_the_grammar_allows_up_to_the_limits():
    from fractions import Fraction

    from trl_spg.tasks.countdown import MAX_DEPTH, MAX_EXPRESSION_LENGTH, MAX_LITERAL_DIGITS

    assert (MAX_EXPRESSION_LENGTH, MAX_DEPTH, MAX_LITERAL_DIGITS) == (256, 32, 12)
    assert evaluate_expression("1+" * 127 + "10") == 137  # exactly 256 characters
    assert evaluate_expression("(" * 32 + "1" + ")" * 32) == 1  # parentheses and unary signs count together
    assert evaluate_expression("-" * 32 + "1") == 1
    assert evaluate_expression("(" * 16 + "-" * 16 + "1" + ")" * 16) == 1
    assert evaluate_expression("-(" * 16 + "1" + ")" * 16) == 1
    assert evaluate_expression("(1)" + "*(-1)" * 40) == 1  # nesting is per number, not accumulated
    assert evaluate_expression("123456789012") == 123456789012
    assert evaluate_expression("123456.123456") == Fraction("123456.123456")
    assert evaluate_expression("0.1 + 0.2") == Fraction(3, 10)  # decimals are exact, not binary floats
    assert evaluate_expression(".5") == Fraction(1, 2) and evaluate_expression("5.+1") == 6
    assert evaluate_expression("007 + 1") == 8 and evaluate_expression("000000000001") == 1
    assert evaluate_expression("0000000000001") is None  # 13 digits
    assert evaluate_expression("2--3") == 5 and evaluate_expression("2*-3") == -6 and evaluate_expression("+-+1") == -1
    assert evaluate_expression("3 +\n 5") == 8 and evaluate_expression("\t3*5\n") == 15
    assert evaluate_expression("1\u00a0+\u20032") == 3  # any whitespace
    assert evaluate_expression("\u0663+\u0664") == 7  # any decimal digits (Arabic-Indic 3 and 4)
    assert evaluate_expression("0/5") == 0
    assert all(isinstance(evaluate_expression(text), Fraction) for text in ("1", "1.5", "-(2)", "1/3"))


COUNTDOWN_SCORES = [
    ("<answer>\n\\boxed{3 \\times 5 + 7}\n</answer>", "3 * 5 + 7", True),
    ("<answer>\n\\boxed{3 * 5 + 7 = 22}\n</answer>", "3 * 5 + 7", True),
    ("<answer>3*5+7</answer>", "3*5+7", True),
    ("\\boxed{(7 + 5) \\cdot 3}", "(7 + 5) * 3", False),
    ("<answer>3*5+7+7</answer>", "3*5+7+7", False),
    ("3*5+7", None, False),
]


@pytest.mark.parametrize(("completion", "prediction", "correct"), COUNTDOWN_SCORES)
def test_countdown_evaluation_parsing(completion, prediction, correct):
    scored = get_task("countdown").score(completion, {"nums": [3, 5, 7], "target": 22})
    assert scored == {"prediction": prediction, "correct": float(correct), "total": 1.0}


# --- Sudoku ------------------------------------------------------------------------------------------------------------

PUZZLE, SOLUTION = "0204301001034020", "1234341221434321"
SUDOKU_CASES = [
    ("<answer>1234341221434321</answer>", 1.0),
    ("<reasoning>\nfill\n</reasoning>\n<answer>\n1234 3412\n2143 4321\n</answer>", 1.0),
    ("<answer>1234341221434322</answer>", 0.875),
    ("<answer>1111111111111111</answer>", 0.25),
    ("<answer>12343412</answer>", 0.5),
    ("<answer>123434122143432199999</answer>", 1.0),
    ("1234341221434321", 0.0),
    ("", 0.0),
    ("<answer></answer>", 0.0),
    ("<answer>0000000000000000</answer> then <answer>1234341221434321</answer>", 1.0),
    ("<answer>R1: 1 2 3 4, R2: 3 4 1 2</answer>", 0.125),
]


@pytest.mark.parametrize("conversational", [False, True])
def test_sudoku_reward_matches_the_reference(conversational):
    (reward,) = get_task("sudoku").reward_funcs
    texts = [text for text, _ in SUDOKU_CASES]
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    rewards = reward(completions, puzzle=[PUZZLE] * len(texts), solution=[SOLUTION] * len(texts))
    assert rewards == [value for _, value in SUDOKU_CASES]


def test_sudoku_evaluation_counts_empty_cells():
    task = get_task("sudoku")
    example = {"puzzle": PUZZLE, "solution": SOLUTION}
    assert task.score("<answer>1234341221434322</answer>", example) == {
        "prediction": "1234341221434322",
        "correct": 7.0,
        "total": 8.0,
    }
    assert task.score("no answer", example) == {"prediction": None, "correct": 0.0, "total": 8.0}


# --- MATH500 -----------------------------------------------------------------------------------------------------------

# (gold, prediction, math-verify, the paper's string normaliser): the cases where they differ are listed in
# docs/tasks.md.
EQUIVALENCE_CASES = [
    ("\\frac{1}{2}", "\\frac12", True, True),
    ("\\frac{1}{2}", "0.5", True, True),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", True, True),
    ("5", "x = 5", True, True),
    ("10", "10\\%", True, True),
    ("(1,2)", "(1, 2)", True, True),
    ("5", "5 \\text{ cm}", True, True),
    ("90^\\circ", "90", True, True),
    ("11\\sqrt2", "11\\sqrt{2}", True, True),
    ("3", "4", False, False),
    ("\\pi", "3.14159", False, False),
    ("[1,2)", "[1,2]", False, False),
    ("2\\sqrt{2}", "\\sqrt{8}", True, False),
    ("0.25", "\\frac{1}{4}", True, False),
    ("1000", "1,000", True, False),
    ("x^2+2x+1", "(x+1)^2", True, False),
    ("\\{1,2\\}", "\\{2,1\\}", True, False),
    ("\\text{(C)}", "C", True, False),
]


@pytest.mark.parametrize(("gold", "prediction", "expected", "reference"), EQUIVALENCE_CASES)
def test_math_equivalence(gold, prediction, expected, reference):
    assert equivalent(prediction, gold) is expected
    assert paper_equivalent(prediction, gold) is reference  # the paper grader's normaliser


def test_math_equivalence_of_missing_or_malformed_answers():
    assert not equivalent(None, "3") and not equivalent("", "3") and not equivalent("3", "")
    assert not equivalent("\\frac{1}{", "\\frac{1}{2}")
    assert not equivalent("}}}{{{", "3")


def test_math_rewards():
    completions = [
        "<reasoning>\nhalf\n</reasoning>\n<answer>\n\\boxed{\\frac{1}{2}}\n</answer>",  # right, boxed in tags
        "The answer is \\boxed{0.5}.",  # right, no tags
        "<answer>1/2</answer>",  # no box
        "<answer>\\boxed{3}</answer>",  # wrong, boxed in tags
        "",
        "<answer>\\boxed{\\frac{1}{2}</answer>",  # unclosed box
    ]
    answer = ["\\frac{1}{2}"] * len(completions)
    assert correctness_reward(completions, answer=answer) == [2.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward(completions, answer=answer) == [0.5, 0.0, 0.0, 0.5, 0.0, 0.0]
    conversational = [[{"role": "assistant", "content": c}] for c in completions[:2]]
    assert correctness_reward(conversational, answer=answer[:2]) == [2.0, 2.0]


def test_math_evaluation_parsing():
    task = get_task("math500")
    assert task.score("\\boxed{1} then \\boxed{\\frac{3}{4}}", {"answer": "\\frac34"})["correct"] == 1.0
    assert task.score("<answer>0.75</answer>", {"answer": "\\frac{3}{4}"}) == {
        "prediction": "0.75",
        "correct": 1.0,
        "total": 1.0,
    }
    assert task.score("I think it is 3/4", {"answer": "\\frac{3}{4}"})["correct"] == 0.0


def test_last_boxed():
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed 5$ more") == "5"
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("nothing") is None
