"""Fuzzing the CLI's numbers: every value is accepted or refused in one line (UsageError or
ConfigError naming the flag), never another exception."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tui_llm.cli.parser import UsageError
from tui_llm.cli.train import given_settings, train_parser
from tui_llm.engine.training.run_config import ConfigError, RunConfig

NUMERIC_FLAGS = ["--batch-size", "--seq-len", "--total-batch-size", "--steps", "--lr", "--warmup",
                 "--final-lr-fraction", "--weight-decay", "--grad-clip", "--val-every", "--val-batches",
                 "--sample-every", "--sample-len", "--temperature", "--top-k", "--save-every", "--keep-checkpoints",
                 "--seed", "--threads", "--max-seq-len", "--layers", "--heads", "--channels"]
VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "-0", "0x10", "1_000", "", " 3", "two", "1e-320"]),
)
OUTCOMES = {"accepted": 0, "refused": 0}


@pytest.mark.slow
@settings(max_examples=400, derandomize=True, deadline=None)
@given(flag=st.sampled_from(NUMERIC_FLAGS), value=VALUES)
def test_every_number_is_accepted_or_refused_in_one_line(flag, value):
    try:
        args = train_parser().parse_args(["data.bin", f"{flag}={value}"])
        RunConfig(**given_settings(args)).validate()
        OUTCOMES["accepted"] += 1
    except ConfigError as e:
        assert "\n" not in e.cli_message() and e.cli_message().startswith(flag), e.cli_message()
        OUTCOMES["refused"] += 1
    except UsageError as e:
        assert "\n" not in str(e)
        OUTCOMES["refused"] += 1


def test_report_outcomes():
    print(f"fuzz CLI numbers: {OUTCOMES['accepted']} accepted, {OUTCOMES['refused']} refused")
