"""Property-based tests (hypothesis) of the agent config and the MetricsConfiguration spec.

Every generated input is either accepted or refused with a message naming the field; never a
traceback (any exception but ConfigError/SpecError fails), never a half-applied change (the
input is not mutated; a refused MetricsConfiguration edit leaves the spec in force whole).
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import kubernetes
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retina_agent.config import ConfigError, load_config
from retina_agent.enrichment.metricsconfig import (
    ADDITIONAL_LABELS,
    CONTEXT_LABELS,
    METRIC_NAMES,
    MetricsConfigurationWatcher,
    SpecError,
    validate_spec,
)

# -- values of every shape, biased towards the edges validators get wrong -----------------------
durations = st.one_of(
    st.sampled_from(
        [
            "0",
            "10s",
            "1m30s",
            ".5s",
            "1.s",
            "500ms",
            "-1s",
            "1d",
            "",
            " ",
            "10",
            "1e3s",
            "2562047h47m16.854775808s",
            "1" + "0" * 400 + "s",
            "nan",
            "inf",
            "12μs",
        ]
    ),
    st.from_regex(r"\A[-+]?(\d{0,4}(\.\d{0,3})?(ns|us|µs|ms|s|m|h)){1,3}\Z", fullmatch=True),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    durations,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)

AGENT_KEYS = {
    "apiServer": st.one_of(
        values,
        st.fixed_dictionaries(
            {},
            optional={
                "host": st.one_of(st.sampled_from(["127.0.0.1", "::1", ""]), values),
                "port": st.one_of(st.integers(-5, 70000), values),
                "readTimeout": st.one_of(durations, values),
                "writeTimeout": st.one_of(durations, values),
                "maxConnections": st.one_of(st.integers(0, 5000), values),
                "workers": values,
                "bogus": values,
            },
        ),
    ),
    "logLevel": st.one_of(st.sampled_from(["debug", "info", "warn", "loud"]), values),
    "enabledPlugin": st.one_of(st.lists(st.sampled_from(["linuxutil", "dns", "nope", "latency"])), values),
    "metricsIntervalDuration": st.one_of(durations, st.floats(), st.integers(-5, 10**5), values),
    "enablePodLevel": values,
    "dataSamplingRate": st.one_of(st.integers(-3, 10), values),
    "stateDir": values,
    "plugins": st.one_of(
        values,
        st.fixed_dictionaries(
            {},
            optional={
                "latency": st.one_of(
                    values,
                    st.fixed_dictionaries(
                        {}, optional={"noResponseTimeout": st.one_of(durations, values), "apiServer": values}
                    ),
                ),
                "packetparser": st.one_of(
                    values,
                    st.fixed_dictionaries(
                        {}, optional={"maxFlows": st.one_of(st.integers(0, 10**7), values)}
                    ),
                ),
            },
        ),
    ),
    "podLevel": st.one_of(values, st.fixed_dictionaries({}, optional={"maxSeries": values})),
    "notAKey": values,
}
agent_configs = st.fixed_dictionaries({}, optional=AGENT_KEYS)
overrides = st.fixed_dictionaries(
    {},
    optional={
        "apiServer.port": st.integers(-1, 70000),
        "apiServer.host": st.text(max_size=10),
        "metricsIntervalDuration": st.one_of(durations, st.text(max_size=8)),
        "logLevel": st.text(max_size=6),
        "plugins.latency.noResponseTimeout": durations,
    },
)


def _paths(data: object, prefix: str = "") -> set[str]:
    """Every dotted key path in ``data`` (``apiServer``, ``apiServer.port``, ...)."""
    found = {prefix} if prefix else set()
    if isinstance(data, dict):
        for key, value in data.items():
            found |= _paths(value, f"{prefix}.{key}" if prefix else str(key))
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=agent_configs, flags=overrides)
def test_agent_config_accepts_or_names_the_key(tmp_path: Path, data: dict, flags: dict) -> None:
    path = tmp_path / "config.yaml"
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except (yaml.YAMLError, OverflowError):
        return  # not representable in YAML: nothing a user could write
    before = copy.deepcopy(flags)
    try:
        config = load_config(path, flags)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        named = _paths(yaml.safe_load(path.read_text())) | set(flags)
        assert (
            any(key and (key in message or repr(key.rsplit(".", 1)[-1]) in message) for key in named)
            or "(top level)" in message
        ), message
        return
    finally:
        assert flags == before, "load_config must not change its inputs"
    # Accepted: every duration the agent will sleep on is finite and within its bounds.
    assert 0.1 <= config.metrics_interval <= 3600 and math.isfinite(config.metrics_interval)
    assert 0.1 <= config.api_server.read_timeout <= 300
    assert 0.1 <= config.api_server.write_timeout <= 300
    assert 1 <= config.api_server.port <= 65535


context_options = st.fixed_dictionaries(
    {"metricName": st.one_of(st.sampled_from(sorted(METRIC_NAMES)), values)},
    optional={
        "sourceLabels": st.one_of(
            st.lists(st.sampled_from([*CONTEXT_LABELS, "bogus", ""]), max_size=4), values
        ),
        "destinationLabels": st.one_of(st.lists(st.sampled_from(CONTEXT_LABELS), max_size=3), values),
        "additionalLabels": st.one_of(
            st.lists(st.sampled_from([*ADDITIONAL_LABELS, "x"]), max_size=2), values
        ),
        "ttl": st.one_of(durations, values),
    },
)
specs = st.one_of(
    values,
    st.fixed_dictionaries(
        {},
        optional={
            "contextOptions": st.one_of(st.lists(context_options, max_size=3), values),
            "namespaces": st.one_of(
                values,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "include": st.one_of(
                            st.lists(st.sampled_from(["a", "b", "", "a"]), max_size=3), values
                        ),
                        "exclude": st.one_of(st.lists(st.sampled_from(["a", "b"]), max_size=2), values),
                    },
                ),
            ),
        },
    ),
)


@settings(max_examples=500, deadline=None)
@given(spec=specs)
def test_metrics_spec_accepts_or_names_the_field(spec: object) -> None:
    before = copy.deepcopy(spec)
    try:
        result = validate_spec(spec)
    except SpecError as exc:
        assert exc.field.startswith("spec"), exc.field
        assert str(exc).startswith(exc.field + ": ") and "\n" not in str(exc)
        return
    finally:
        assert spec == before or spec != spec, "validate_spec must not change the spec"  # nan != nan
    for option in result.context_options.values():
        assert option.ttl_seconds == 0 or 1 <= option.ttl_seconds <= 720 * 3600


def _object(name: str, spec: object, created: str) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": spec}


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(specs, min_size=1, max_size=6))
def test_refused_edit_leaves_the_spec_in_force_whole(edits: list) -> None:
    """Edits of the configuration in force: after each, the spec in force is that of the last
    valid edit (or the first valid one), never a mix and never a refused one."""
    watcher = MetricsConfigurationWatcher(kubernetes.client.ApiClient(), write_status=False)
    seen: list = []
    watcher.subscribe(seen.append)
    expected = None
    for spec in edits:
        watcher.apply("MODIFIED", _object("only", copy.deepcopy(spec), "2026-01-01T00:00:00Z"))
        with contextlib.suppress(SpecError):  # refused: the expected spec stays what it was
            expected = validate_spec(spec)
        assert watcher.current() == expected
    assert (seen[-1] if seen else None) == expected
