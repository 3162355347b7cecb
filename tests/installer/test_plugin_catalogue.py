"""One plugin catalogue (collections/retina/plugins/module_utils/preflight/catalogue.py): the agent
reads it, the preflight judges by it, and the static YAML (module DOCUMENTATION, role argument
specs, defaults and capabilities) is generated from it and fails here when it drifts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retina_agent import catalogue as agent_catalogue
from retina_agent.config import AgentConfig, ConfigError, PluginOptions, load_config
from retina_agent.plugins import REGISTRY
from retina_preflight.core import catalogue
from tests.installer.ansible_run import COLLECTION, REPO

SCRIPT = REPO / "scripts" / "plugin_catalogue.py"


def _generator():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import plugin_catalogue
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return plugin_catalogue


def test_agent_and_preflight_read_the_same_file() -> None:
    assert Path(agent_catalogue.__file__).resolve() == Path(catalogue.__file__).resolve()
    assert (
        Path(catalogue.__file__).resolve().parent == (COLLECTION / "plugins/module_utils/preflight").resolve()
    )


def test_the_agent_has_every_plugin_of_the_catalogue() -> None:
    assert set(REGISTRY) == set(catalogue.PLUGIN_NAMES)
    assert set(PluginOptions.model_fields) == set(catalogue.PLUGIN_NAMES)
    assert AgentConfig().enabled_plugin == list(catalogue.DEFAULT_PLUGINS)


def test_the_agent_rejects_a_name_outside_the_catalogue_and_lists_the_catalogue() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(overrides={"enabledPlugin": ["dns", "bogus"]})
    assert "unknown plugin bogus" in str(error.value)
    assert ", ".join(catalogue.PLUGIN_NAMES) in str(error.value)


def test_generated_yaml_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_drifted_file_is_found_and_rewritten() -> None:
    """The bug this replaces: the module's DOCUMENTATION default lacked latency."""
    gen = _generator()
    cat = gen.load_catalogue()
    module = COLLECTION / "plugins" / "modules" / "retina_preflight.py"
    text = module.read_text()
    names = ", ".join(cat.PLUGIN_NAMES)
    drifted = text.replace(f"default: [{names}]", f"default: [{names.replace(', latency', '')}]")
    assert drifted != text
    assert gen.targets(cat)[module](drifted, "retina_preflight.py") == text


def test_role_specs_defaults_and_capabilities_follow_the_catalogue() -> None:
    roles = COLLECTION / "roles"
    agent_spec = yaml.safe_load((roles / "agent/meta/argument_specs.yml").read_text())
    option = agent_spec["argument_specs"]["main"]["options"]["agent_plugins"]
    assert option["choices"] == list(catalogue.PLUGIN_NAMES)
    assert option["default"] == list(catalogue.DEFAULT_PLUGINS)
    preflight_spec = yaml.safe_load((roles / "preflight/meta/argument_specs.yml").read_text())
    assert preflight_spec["argument_specs"]["main"]["options"]["preflight_plugins"]["choices"] == list(
        catalogue.PLUGIN_NAMES
    )
    assert yaml.safe_load((roles / "agent/defaults/main.yml").read_text())["agent_plugins"] == list(
        catalogue.DEFAULT_PLUGINS
    )
    capabilities = yaml.safe_load((roles / "agent/vars/main.yml").read_text())["__agent_plugin_capabilities"]
    assert capabilities == {spec.name: list(spec.capabilities) for spec in catalogue.PLUGINS.values()}
    # Every eBPF plugin loads programs; of them exactly the TC ones manage qdiscs (NET_ADMIN).
    # netfilter, no eBPF, needs NET_ADMIN to read the kernel's rule counters.
    for spec in catalogue.PLUGINS.values():
        assert ("BPF" in spec.capabilities) == spec.ebpf
        if spec.ebpf:
            assert spec.net_admin == ("tc_clsact" in spec.needs)
    assert catalogue.PLUGINS["netfilter"].capabilities == ("NET_ADMIN",)


def test_every_check_the_catalogue_names_is_run_by_the_preflight() -> None:
    """A misspelt check id in the catalogue would never block its plugin: each must be a real check."""
    from retina_preflight.core import PreflightOptions, run_preflight
    from retina_preflight.core.tracepoints import TRACEPOINTS

    tree = REPO / "tests" / "preflight" / "hosts" / "ubuntu-22.04-hwe-6.5"
    report = run_preflight(PreflightOptions(root=str(tree)))
    check_ids = {check["id"] for check in report["checks"]}
    for spec in catalogue.PLUGINS.values():
        named = set(spec.needs + spec.strict + spec.degrades) | (
            set(catalogue.EBPF_CHECKS) if spec.ebpf else set()
        )
        assert named <= check_ids, (spec.name, named - check_ids)
    assert {need.plugin for need in TRACEPOINTS} <= set(catalogue.PLUGIN_NAMES)
