"""The settings contract shared with the Job builder: flags, RETINA_CAPTURE_* env, secrets."""

from __future__ import annotations

import pytest

from retina_capture.credentials import SECRET_ENV
from retina_capture.filters import build_expression, parse_endpoint_list
from retina_capture.worker.settings import (
    SettingsError,
    settings_from_env_and_argv,
    settings_to_env,
)

SAS = "https://acct.blob.core.windows.net/captures?sv=2024&sig=SECRET"


def test_env_round_trip_gives_the_same_settings():
    argv = [
        "--name",
        "c1",
        "--node-name",
        "n1",
        "--duration",
        "1m30s",
        "--max-size",
        "7",
        "--packet-size",
        "96",
        "--file-count",
        "2",
        "--interfaces",
        "eth0,eth1",
        "--tcpdump-filter",
        "tcp",
        "--include-filter",
        "10.0.0.1:80,[fd00::1]:53",
        "--exclude-filter",
        "*:22",
        "--pod-ips",
        "10.0.0.1",
        "--include-metadata",
        "false",
        "--host-path",
        "incident/1",
        "--s3-bucket",
        "captures",
        "--s3-region",
        "eu-west-1",
        "--s3-endpoint",
        "https://minio.local:9000",
        "--s3-path",
        "team",
    ]
    secrets = {"RETINA_CAPTURE_BLOB_UPLOAD": SAS, "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}
    settings = settings_from_env_and_argv(argv, secrets)
    env = settings_to_env(settings)
    assert not set(env) & set(SECRET_ENV) and "SECRET" not in str(env) and "SECRET" not in repr(settings)
    assert env["RETINA_CAPTURE_DURATION"] == "1m30s" and env["RETINA_CAPTURE_INCLUDE_METADATA"] == "false"
    assert settings_from_env_and_argv([], {**env, **secrets}) == settings
    assert settings.outputs == ["host-path", "blob", "s3"]
    assert settings.s3_access_key_id == "id" and settings.blob_upload == SAS


def test_flags_win_over_env_and_defaults_follow_retina():
    env = {
        "RETINA_CAPTURE_NAME": "from-env",
        "RETINA_CAPTURE_DURATION": "10s",
        "RETINA_CAPTURE_HOST_PATH": "x",
        "NODE_NAME": "node-9",
    }
    s = settings_from_env_and_argv(["--duration", "20s"], env)
    assert (s.name, s.duration, s.node_name) == ("from-env", 20.0, "node-9")
    assert (s.max_size, s.packet_size, s.file_count, s.interfaces, s.include_metadata, s.s3_path) == (
        100,
        0,
        0,
        ("any",),
        True,
        "retina/captures",
    )


def test_blob_sas_url_from_a_file(tmp_path):
    f = tmp_path / "sas"
    f.write_text(SAS + "\n")
    s = settings_from_env_and_argv(["--name", "c", "--blob-upload-file", str(f)], {})
    assert s.blob_upload == SAS and s.outputs == ["blob"]


@pytest.mark.parametrize(
    "text,seconds", [("30s", 30), ("1m", 60), ("1m30s", 90), ("1.5h", 5400), ("1500ms", 1.5)]
)
def test_go_durations(text, seconds):
    s = settings_from_env_and_argv(["--name", "c", "--host-path", "x", "--duration", text], {})
    assert s.duration == seconds


def test_include_exclude_become_one_pcap_expression():
    expr = build_expression(
        "tcp",
        parse_endpoint_list("10.0.0.1:80,*:53,[fd00::1]:*"),
        parse_endpoint_list("10.0.0.9", "--exclude-filter"),
    )
    assert expr == (
        "(tcp) and ((host 10.0.0.1 and port 80) or (port 53) or (host fd00::1)) and not ((host 10.0.0.9))"
    )


def test_every_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        settings_from_env_and_argv(
            ["--name", "c", "--max-size", "0", "--file-count", "-1", "--s3-bucket", "Bad_Bucket"], {}
        )
    text = str(err.value)
    for flag in (
        "--max-size",
        "--file-count",
        "--s3-bucket: 'Bad_Bucket'",
        "RETINA_CAPTURE_S3_ACCESS_KEY_ID",
    ):
        assert flag in text
