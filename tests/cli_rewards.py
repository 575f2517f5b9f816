"""A reward function the CLI test imports by its dotted path (`cli_rewards.digit_count`)."""


def digit_count(completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in text)) for text in completions]
