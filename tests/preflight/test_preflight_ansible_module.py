"""The retina.observability.retina_preflight module, run by ansible for real, returns the CLI's report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.preflight import HOSTS, VENV_BIN, ansible_env, by_id, run_cli

FQCN = "retina.observability.retina_preflight"


def run_module(collections: Path, args: str, check: bool = False) -> tuple[int, dict]:
    """`ansible localhost -m FQCN -a ARGS` with the json callback; returns (rc, module result)."""
    argv = [
        str(VENV_BIN / "ansible"),
        "localhost",
        "-m",
        FQCN,
        "-a",
        args,
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    ]
    if check:
        argv.append("--check")
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env=ansible_env(collections), check=False
    )
    output = json.loads(done.stdout)
    result = output["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return done.returncode, result


def test_module_on_a_fixture_tree_matches_the_cli(collections_path: Path) -> None:
    tree = HOSTS / "centos7"
    rc, result = run_module(collections_path, f"root={tree} fail_on=never")
    assert rc == 0 and result["changed"] is False
    _, cli_report = run_cli("--root", str(tree))
    report = result["report"]
    assert result["ansible_facts"]["retina_preflight"] == report
    # one code path: identical checks and plugin verdicts (host.python differs: the module's interpreter)
    assert report["checks"] == cli_report["checks"]
    assert report["plugins"] == cli_report["plugins"]
    assert report["summary"] == cli_report["summary"]


def test_fail_on_fail_fails_the_task_naming_the_checks(collections_path: Path) -> None:
    rc, result = run_module(collections_path, "root=%s" % (HOSTS / "centos7"))
    assert rc != 0 and result["failed"] is True
    assert "kernel_version" in result["msg"] and "fail_on=fail" in result["msg"]
    assert result["report"]["summary"]["exit_code"] == 1


def test_fail_on_warn_and_never(collections_path: Path) -> None:
    tree = HOSTS / "ubuntu-22.04-5.15"
    rc, result = run_module(collections_path, f"root={tree} fail_on=warn")
    assert rc != 0 and "tracepoint:skb:kfree_skb" in result["msg"]
    rc, result = run_module(collections_path, f"root={tree}")  # default fail_on=fail: warnings pass
    assert rc == 0 and result["report"]["summary"]["verdict"] == "warn"


def test_bad_option_is_rejected_by_the_argument_spec(collections_path: Path) -> None:
    rc, result = run_module(collections_path, "plugins=packetforward,bogus")
    assert rc != 0 and "plugins" in result["msg"] and "bogus" in result["msg"]
    rc, result = run_module(collections_path, "root=/nonexistent/tree")
    assert rc != 0 and "root '/nonexistent/tree' is not a directory" in result["msg"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the bpf() and TC probes need root")
def test_module_on_this_machine_in_check_mode(collections_path: Path) -> None:
    rc, result = run_module(collections_path, "fail_on=never", check=True)
    assert rc == 0 and result["changed"] is False
    checks = by_id(result["ansible_facts"]["retina_preflight"])
    assert checks["kprobes"]["verdict"] == "warn"
    assert checks["tc_clsact"]["verdict"] == "pass"
    assert checks["tracepoint:skb:kfree_skb"]["verdict"] == "pass"


def test_default_plugins_and_documentation_are_the_catalogue(collections_path: Path) -> None:
    """Without ``plugins`` the module judges every plugin of the catalogue, and ansible-doc says so
    (its DOCUMENTATION once lacked latency while the code judged it)."""
    from retina_preflight.core.catalogue import PLUGIN_NAMES

    rc, result = run_module(collections_path, "root=%s fail_on=never" % (HOSTS / "ubuntu-22.04-hwe-6.5"))
    assert rc == 0
    assert [plugin["name"] for plugin in result["report"]["plugins"]] == list(PLUGIN_NAMES)
    assert "latency" in PLUGIN_NAMES
    done = subprocess.run(
        [str(VENV_BIN / "ansible-doc"), "--json", FQCN],
        capture_output=True,
        text=True,
        timeout=120,
        env=ansible_env(collections_path),
        check=True,
    )
    doc = json.loads(done.stdout)[FQCN]["doc"]
    assert doc["options"]["plugins"]["choices"] == list(PLUGIN_NAMES)
    assert doc["options"]["plugins"]["default"] == list(PLUGIN_NAMES)
    assert any("Python >= 3.6" in line for line in doc["requirements"])


MODULE = Path(__file__).resolve().parents[2] / "collections/retina/plugins/modules/retina_preflight.py"


def _assert_names_the_python_it_needs(done: subprocess.CompletedProcess, found: str) -> None:
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["failed"] is True
    assert "needs Python 3.6 or newer on the managed node, found " + found in result["msg"]
    assert "ansible_python_interpreter" in result["msg"]


def test_module_on_a_too_old_python_says_which_python_it_needs() -> None:
    # The module file as the node runs it, with the interpreter reporting 3.5: the guard answers
    # in the module protocol (JSON on stdout) before any 3.6 syntax is imported.
    code = "import sys; sys.version = '3.5.2 (fake)'; sys.version_info = (3, 5, 2, 'final', 0); " + (
        "exec(compile(open(sys.argv[1]).read(), sys.argv[1], 'exec'), {'__name__': '__main__'})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, timeout=60, check=False
    )
    _assert_names_the_python_it_needs(done, "3.5.2")


def _old_python(version: str) -> str | None:
    """A real interpreter of ``version`` (e.g. 2.7) on this machine, from PATH or pyenv."""
    pyenv = Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")
    candidates = [f"python{version}", *map(str, pyenv)]
    for candidate in candidates:
        try:
            done = subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=30, check=False)
        except OSError:
            continue
        if done.returncode == 0:
            return candidate
    return None


def test_module_on_python_27_says_which_python_it_needs() -> None:
    python27 = _old_python("2.7")
    if python27 is None:
        pytest.skip("no Python 2.7 on this machine (CentOS 7's default python)")
    done = subprocess.run([python27, str(MODULE)], capture_output=True, text=True, timeout=60, check=False)
    _assert_names_the_python_it_needs(done, "2.7.")
