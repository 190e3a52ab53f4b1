"""A fuzz of `jaxconv train`'s options: every value is accepted or refused in one line, never a traceback (#25).

Random values for every option (whole numbers small, negative and huge, floats, words, the registries'
names) go through what the command does before it trains: argparse (`cli.build_parser`), the config's
checks (`cli.train_config(...).validate()`), the checks against the data (`loop.check_against_data`, on
the bundled digits) and against `--out` (`rundir.check_out`, which creates nothing). Each call either
passes, or ends in argparse's usage error (exit 2), or in jaxconv's own one-line ValueError/TypeError
starting "train: ". Nothing is trained.

    python -m pytest tests/test_cli_fuzz.py
"""

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxconv import cli, data, loop, rundir

EXAMPLES = 1000  # argument lists drawn (derandomized: the same ones every run)

PARSER = cli.build_parser()
TRAIN = PARSER._subparsers._group_actions[0].choices["train"]  # the `train` sub-parser: its options and choices
OPTIONS = {a.option_strings[-1]: a for a in TRAIN._actions if a.option_strings and a.dest != "help"}
DIGITS = data.DATASETS["digits"].load(None)

COUNTS = {"calls": 0, "accepted": 0, "usage error": 0, "jaxconv error": 0}


def _value(action):
    """Values for one option, mostly of its own kind (its choices, whole numbers, numbers) so that many lists
    reach jaxconv's own checks, and sometimes of another kind (floats for ints, words for numbers)."""
    words = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
    numbers = st.one_of(st.integers(-5, 40), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2**31, 2**32, 2**63]))
    floats = st.floats(allow_nan=True, allow_infinity=True).map(repr)
    odd = st.sampled_from(["", "-1", "1e400", "nan", "0x10", "3.0"])
    if action.choices:
        own = st.sampled_from(sorted(map(str, action.choices)))
        return st.one_of(own, own, own, words, odd)
    if action.type is float or getattr(action.type, "__name__", "") == "_positive_float":
        return st.one_of(floats, floats, numbers.map(str), words, odd)
    if action.type is None or action.type is str:  # paths and addresses
        return st.one_of(words, words, numbers.map(str), odd)
    return st.one_of(numbers.map(str), numbers.map(str), numbers.map(str), floats, words, odd)


@st.composite
def train_argv(draw):
    """`jaxconv train` arguments: a random subset of the options, each with a random value."""
    argv = []
    for flag in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=8, unique=True)):
        action = OPTIONS[flag]
        argv.append(flag)
        if action.nargs != 0:  # store_true flags take no value
            argv.append(draw(_value(action)))
    return argv


def parse_and_check(argv):
    """What `jaxconv train ARGV` checks before it trains: 'accepted', 'usage error' or 'jaxconv error'."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = PARSER.parse_args(["train", *argv])
    except SystemExit as e:
        assert e.code == 2 and "usage: jaxconv train" in stderr.getvalue(), (argv, e.code, stderr.getvalue())
        assert stderr.getvalue().strip().splitlines()[-1].startswith("jaxconv train: error: "), stderr.getvalue()
        return "usage error"
    try:
        config = cli.train_config(args).validate()
        rundir.check_out(config.out, fresh=not config.resume, overwrite=config.overwrite)
        if config.data == "digits":
            limit = config.limit or len(DIGITS.x_train)
            loop.check_against_data(config, data.Dataset(DIGITS.x_train[:limit], *DIGITS[1:]))
    except (ValueError, TypeError) as e:
        message = str(e)
        assert type(e) in (ValueError, TypeError, rundir.RunDirectoryError), (argv, repr(e))
        assert message.startswith("train: ") and "\n" not in message, (argv, message)
        return "jaxconv error"
    return "accepted"


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(train_argv())
def test_every_train_option_is_accepted_or_refused_in_one_line(argv):
    outcome = parse_and_check(argv)
    COUNTS["calls"] += 1
    COUNTS[outcome] += 1


def test_the_fuzz_reached_every_outcome():
    # Runs after the fuzz above (file order): it drew accepted lists and both kinds of refusal.
    if COUNTS["calls"] == 0:
        pytest.skip("run with the fuzz above")
    print(f"jaxconv train fuzz: {COUNTS}")
    assert COUNTS["calls"] == EXAMPLES and all(COUNTS[k] for k in ("accepted", "usage error", "jaxconv error"))


@pytest.mark.parametrize("argv, outcome", [
    (["--seed", str(2**31)], "accepted"),
    (["--seed", str(2**80)], "accepted"),
    (["--shift", "32"], "jaxconv error"),
    (["--shift", "31"], "accepted"),
    (["--shift", "-1"], "jaxconv error"),
    (["--checkpoint-every", "-3"], "jaxconv error"),
    (["--lr", "nan"], "usage error"),
    (["--epochs", "1e3"], "usage error"),
])
def test_named_cases(argv, outcome):
    assert parse_and_check([*argv, "--out", "runs/fuzz-never-created"]) == outcome
