"""The one command line (sgl_qwen1m.cli) and its shared value parsers (sgl_qwen1m.args). CPU only, no SGLang."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sgl_qwen1m import args, cli

ROOT = Path(__file__).resolve().parents[1]


def test_parse_lengths_suffixes_sorted_unique() -> None:
    assert args.lengths("262144,128K,131072, 1M") == [131072, 262144, 1048576]


@pytest.mark.parametrize("bad", ["", "abc", "-5", "0", "inf", "nan", "1e400"])
def test_parse_lengths_rejects(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        args.lengths(bad)


def test_shared_value_parsers() -> None:
    assert args.length_or_zero("0") == 0 and args.length_or_zero("256K") == 262144
    assert args.positive_floats("1, 4,8.5") == [1.0, 4.0, 8.5]
    assert args.key_value("disable-cuda-graph=true") == ("disable_cuda_graph", True)
    assert args.key_value('a={"b": 1}') == ("a", {"b": 1}) and args.key_value("x=abc") == ("x", "abc")
    for fn, bad in [(args.positive_floats, "0"), (args.positive_floats, "inf"), (args.positive_floats, "x"),
                    (args.key_value, "novalue"), (args.key_value, "=1")]:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            fn(bad)


def test_verbs_and_the_top_level_plan(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert all(verb in out for verb in cli.VERBS) and "{demo,eval,bench,train," in out
    assert cli.main(["bench", "plan", "--lengths", "128K,256K"]) == 0
    text = capsys.readouterr().out
    assert cli.main(["plan", "--lengths", "256K,128K"]) == 0  # the same planner
    assert capsys.readouterr().out == text and "6.45" in text


@pytest.mark.parametrize("bad", ["inf", "0", "nan", "-1K", "1e400"])
def test_bad_length_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["plan", f"--lengths={bad}"])
    assert exc.value.code == 2
    assert repr(bad) in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo", "--multiples", "0,1"], ["eval", "run", "--engine-arg", "novalue"]])
def test_bad_values_of_other_verbs_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_old_bench_spelling_forwards() -> None:
    """``python -m sgl_qwen1m.bench`` (recorded in committed results) is ``python -m sgl_qwen1m bench``."""
    argv = [sys.executable, "-m", "sgl_qwen1m.bench", "plan", "--lengths", "128K"]
    old = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    new = [sys.executable, "-m", "sgl_qwen1m", "bench", *argv[3:]]
    assert subprocess.run(new, capture_output=True, text=True, cwd=ROOT, check=True).stdout == old
    assert "6.45" in old
