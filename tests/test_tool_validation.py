"""Tools and the reference engine validate their inputs (issue 13): a clear message naming the bad value, a
non-zero exit, no traceback. Through the real command line (``sgl_qwen1m.cli.main`` and a subprocess); CPU only.

Rule checked by each test is in its name: ``plan`` rejects a memory fraction outside (0, 1) (it used to print
"fits" with -316 GiB of headroom), non-positive GPU sizes, peak TFLOPS and request counts, a model directory
without config.json; ``eval``/``demo`` reject zero or negative sample counts and unknown tasks; ``eval run --runner
http`` names an unreachable URL; ``ReferenceEngine`` rejects empty prompts, out-of-range or non-integer ids and
sampling parameters it does not implement.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sgl_qwen1m import cli
from sgl_qwen1m.bench.reliability import free_port
from sgl_qwen1m.frontend import check_sampling_params, check_token_ids

ROOT = Path(__file__).resolve().parents[1]


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("value", ["5", "1", "0", "-0.2", "1.0", "nan", "abc"])
def test_plan_rejects_mem_fraction_outside_0_1(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(["bench", "plan", "--mem-fraction-static", value], capsys)
    assert "--mem-fraction-static" in err and "(0, 1)" in err and repr(value) in err


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "--gpu-gib", "-3"],
        ["plan", "--gpu-gib", "inf"],
        ["plan", "--peak-tflops", "0"],
        ["plan", "--max-running-requests", "0"],
        ["plan", "--max-running-requests", "2.5"],
        ["bench", "e2e", "--mem-fraction-static", "1.5"],
        ["bench", "e2e", "--repeats", "0"],
        ["bench", "serve-smoke", "--new-tokens", "-1"],
        ["bench", "reliability", "--chunked-prefill-size", "0"],
    ],
)
def test_plan_and_bench_reject_non_positive_sizes(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(argv, capsys)
    assert f"argument {argv[-2]}" in err and repr(argv[-1]) in err


def test_plan_names_a_model_dir_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "plan: error: --model" in err and str(tmp_path) in err and "config.json" in err
    (tmp_path / "config.json").write_text("{not json")
    assert cli.main(["plan", "--model", str(tmp_path)]) == 1
    assert "cannot read its config.json" in capsys.readouterr().err


def test_plan_still_plans_with_good_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--lengths", "128K", "--mem-fraction-static", "0.7"]) == 0
    assert "True" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["eval", "run", "--samples", "0"], ["eval", "run", "--samples", "-3"], ["eval", "agree", "--samples", "0"],
     ["demo", "--samples", "0"], ["demo", "--multiples", "0"], ["demo", "--multiples", "-1"]],
)
def test_eval_and_demo_reject_zero_or_negative_counts(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(argv, capsys)
    assert argv[-2] in err and repr(argv[-1]) in err


def test_eval_rejects_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(["eval", "run", "--tasks", "passkey,bogus"], capsys)
    assert "bogus" in err and "niah_single" in err
    assert cli.build_parser().parse_args(["eval", "run", "--tasks", "passkey"]).tasks == ["passkey"]


def test_eval_http_names_the_unreachable_url(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["eval", "run", "--runner", "http", "--url", url, "--samples", "1", "--multiples", "1"]) == 1
    err = capsys.readouterr().err
    assert "eval run: error: cannot reach an SGLang server at " + url in err and "--url" in err


@pytest.mark.parametrize(
    "argv, rc, needle",
    [
        (["plan", "--mem-fraction-static", "5"], 2, "expected a fraction in (0, 1)"),
        (["eval", "run", "--runner", "http", "--url", "http://127.0.0.1:1", "--samples", "1"], 1,
         "cannot reach an SGLang server at http://127.0.0.1:1"),
    ],
)
def test_subprocess_exit_code_and_no_traceback(argv: list[str], rc: int, needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "sgl_qwen1m", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == rc, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


# ---- ReferenceEngine ------------------------------------------------------------------------------------------


def test_token_id_check_names_position_value_and_vocab() -> None:
    assert check_token_ids((1, 2, 3), 10) == [1, 2, 3]
    for ids, pos, val in [([1, 10], 1, "10"), ([-1], 0, "-1"), ([0, 1, 2.0], 2, "2.0"), ([0, "3"], 1, "'3'"),
                          ([True], 0, "True")]:
        with pytest.raises(ValueError, match=rf"input_ids\[{pos}\] = {val} .*\[0, 10\)"):
            check_token_ids(ids, 10)
    with pytest.raises(ValueError, match="empty prompt"):
        check_token_ids([], 10)


@pytest.mark.parametrize(
    "sp, needle",
    [
        ({"temperature": 0.7}, "greedily"),
        ({"temperature": -1}, "temperature must be"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"min_new_tokens": 3}, "min_new_tokens"),
        ({"n": 2}, "n=2"),
        ({"ignore_eos": True}, "ignore_eos"),
        ({"regex": "[0-9]+"}, "regex"),
        ({"json_schema": "{}"}, "json_schema"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": "8"}, "max_new_tokens"),
        ({"beam_width": 4}, "beam_width"),
    ],
)
def test_sampling_params_it_does_not_implement_are_errors(sp: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        check_sampling_params(sp)


def test_neutral_sampling_params_are_accepted() -> None:
    """What sgl.gen(temperature=0) sends (SglSamplingParams.to_srt_kwargs defaults), and top_p/top_k under greedy."""
    check_sampling_params({"max_new_tokens": 8, "min_new_tokens": 0, "n": 1, "stop": (), "stop_token_ids": (),
                           "stop_regex": (), "temperature": 0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                           "frequency_penalty": 0.0, "presence_penalty": 0.0, "ignore_eos": False, "regex": None,
                           "json_schema": None, "skip_special_tokens": True, "spaces_between_special_tokens": True})
    check_sampling_params({"temperature": 0, "top_p": 0.9, "top_k": 20})  # no effect on the arg-max
    check_sampling_params({"temperature": 0.8, "top_k": 1})  # greedy all the same


def test_reference_engine_rejects_bad_prompts_and_params() -> None:
    from sgl_qwen1m.frontend import ReferenceEngine

    eng = ReferenceEngine()
    v = eng.vocab_size
    with pytest.raises(ValueError, match="empty prompt"):
        eng.generate("", {"max_new_tokens": 4, "temperature": 0})
    with pytest.raises(ValueError, match="empty prompt"):
        eng.generate(input_ids=[], sampling_params={"max_new_tokens": 4})
    with pytest.raises(ValueError, match=rf"input_ids\[2\] = {v} .*vocab_size {v}"):
        eng.generate(input_ids=[1, 2, v], sampling_params={"max_new_tokens": 2})
    with pytest.raises(ValueError, match=r"input_ids\[0\] = -5"):
        eng.generate(input_ids=[-5, 1], sampling_params={"max_new_tokens": 2})
    with pytest.raises(ValueError, match="presence_penalty"):
        eng.generate(input_ids=[1, 2], sampling_params={"max_new_tokens": 2, "presence_penalty": 0.5})
    out = eng.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 2, "temperature": 0, "top_p": 0.5})
    assert out["meta_info"]["prompt_tokens"] == 3 and len(out["output_ids"]) <= 2
    assert eng.generate("", {"max_new_tokens": 0})["output_ids"] == []  # cache_prefix of an empty program


def test_http_runner_errors_name_the_url() -> None:
    """A server that answers /health but fails /generate: a CommandError with the status and the URL, no traceback."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from sgl_qwen1m.args import CommandError
    from sgl_qwen1m.evals.runners import HttpRunner

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"error": {"message": "input_ids[1] = 999999 is outside [0, 152064)"}}'
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        runner = HttpRunner(url, timeout=10)
        runner.check_reachable()
        with pytest.raises(CommandError, match=rf"{url}/generate answered HTTP 400: .*999999"):
            runner.generate([[1, 999999]], [2])
    finally:
        server.shutdown()
