"""Helpers for the preflight tests: the CLI as a process, report readers, CRDs and kubeconfigs
for the API emulator, and the Ansible environment. Fixtures live in tests/preflight/conftest.py;
test modules import these helpers from here, never from a conftest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
HOSTS = REPO / "tests" / "preflight" / "hosts"
VENV_BIN = Path(sys.executable).parent
COLLECTION = REPO / "collections" / "retina"


SERVER_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.2",
    "gitCommit": "39683505b630ff2121012f3c5b16215a1449d5ed",
    "gitTreeState": "clean",
    "buildDate": "2024-06-11T20:21:00Z",
    "goVersion": "go1.22.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def run_cli(*args: str, env: dict | None = None) -> tuple[int, dict]:
    """Run `retina-preflight --json ARGS` and return (exit code, report)."""
    done = subprocess.run(
        [str(VENV_BIN / "retina-preflight"), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.stdout, f"no report on stdout; stderr: {done.stderr}"
    return done.returncode, json.loads(done.stdout)


def by_id(report: dict) -> dict[str, dict]:
    return {check["id"]: check for check in report["checks"]}


def plugins(report: dict) -> dict[str, dict]:
    return {plugin["name"]: plugin for plugin in report["plugins"]}


def create_crd(api_url: str, name: str) -> None:
    response = requests.post(
        api_url + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        timeout=10,
        json={
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
        },
    )
    response.raise_for_status()


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
            }
        )
    )
    return path


def ansible_env(collections: Path) -> dict:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_LOCAL_TEMP=str(collections.parent / "tmp"),
        ANSIBLE_HOME=str(collections.parent / "home"),
        PATH="{}:{}".format(VENV_BIN, env.get("PATH", "/usr/bin:/bin")),
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
    )
    return env
