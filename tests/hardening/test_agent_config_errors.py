"""retina-agent's bad inputs: one line naming the input and the fix, exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retina_agent.config import load_config
from retina_agent.enrichment.metricsconfig import SpecError, validate_spec

AGENT = [sys.executable, "-m", "retina_agent.cli"]


def run_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "expect"),
    [
        (lambda tmp: ["--config", str(tmp)], "is a directory; give --config the path"),
        (lambda tmp: ["--config", write(tmp, bytes(range(256)) * 4)], "is not text (not UTF-8)"),
        (lambda tmp: ["--config", write(tmp, "\x00\x01binary")], "is not valid YAML"),
        (lambda tmp: ["--config", str(tmp / "missing.yaml")], "does not exist; give --config"),
        (
            lambda tmp: ["--config", write(tmp, "apiServer: 5\n"), "--port", "1234"],
            "apiServer: is 5 in the config file but a command-line flag sets apiServer.port; "
            "make apiServer a mapping",
        ),
        (
            lambda tmp: ["--config", write(tmp, "apiServer: 5\n")],
            "apiServer: Input should be a valid dictionary",
        ),
        (
            lambda tmp: ["--config", write(tmp, "metricsIntervalDuration: .nan\n")],
            "metricsIntervalDuration: nan is not a finite duration; use one between 100ms and 1h",
        ),
        (
            lambda tmp: ["--config", write(tmp, "metricsIntervalDuration: .inf\n")],
            "metricsIntervalDuration: inf is not a finite duration",
        ),
        (
            lambda tmp: ["--config", write(tmp, "metricsIntervalDuration: 1" + "0" * 400 + "\n")],
            "metricsIntervalDuration: 1000000000",
        ),
        (
            lambda tmp: ["--config", write(tmp, "metricsIntervalDuration: 1" + "0" * 400 + "s\n")],
            "metricsIntervalDuration: '1000000000",
        ),
        (lambda tmp: ["--metrics-interval", "2h"], "metricsIntervalDuration: '2h' is too long"),
        (
            lambda tmp: ["--config", write(tmp, "plugins: {latency: {noResponseTimeout: 0s}}\n")],
            "plugins.latency.noResponseTimeout: '0s' is too short; use a duration between 1ms and 1m",
        ),
        (
            lambda tmp: ["--config", write(tmp, "apiServer: {readTimeout: .nan}\n")],
            "apiServer.readTimeout: nan is not a finite duration",
        ),
        (lambda tmp: ["--config", write(tmp, "a: [\n")], "is not valid YAML at line 2, column 1"),
        (lambda tmp: ["--config", "/dev/zero"], "config file /dev/zero is not a regular file"),
        (lambda tmp: ["--config", write(tmp, "# padding\n" * 200_000)], "is over 1024 KiB"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, make_args, expect: str) -> None:
    result = run_agent(*make_args(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("retina-agent: ")
    assert expect in lines[0]
    assert len(lines[0]) < 400, "long inputs are shortened in the message"


@pytest.mark.parametrize("value", ["0", "0s", "", None, 0])
def test_metricsconfiguration_ttl_zero_means_never(value) -> None:
    spec = validate_spec(
        {
            "contextOptions": [{"metricName": "forward_count", "ttl": value}],
            "namespaces": {"include": ["default"]},
        }
    )
    assert spec.context_options["forward_count"].ttl_seconds == 0


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("0.5s", "too short; use a duration between 1s and 720h, or 0 (never expire)"),
        ("721h", "too long"),
        ("-1h", "negative"),
        ("1" + "0" * 400 + "h", "too long"),
        ("1d", "not a duration"),
    ],
)
def test_metricsconfiguration_ttl_bounds(value: str, expect: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(
            {
                "contextOptions": [{"metricName": "forward_count", "ttl": value}],
                "namespaces": {"include": ["default"]},
            }
        )
    assert info.value.field == "spec.contextOptions[0].ttl"
    assert expect in info.value.message


def test_bind_address_flag_and_timeouts_reach_the_config() -> None:
    from retina_agent.cli import overrides_from, parse_args

    config = load_config(None, overrides_from(parse_args(["--bind-address", "10.1.2.3"])))
    assert config.api_server.host == "10.1.2.3"
    config = load_config(None, {"apiServer.readTimeout": "2s", "apiServer.writeTimeout": 3})
    assert (config.api_server.read_timeout, config.api_server.write_timeout) == (2.0, 3.0)
