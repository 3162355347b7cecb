"""Documentation that cannot rot: every command of the README's cluster-admin sections is run,
verbatim, by the test file its block names, and every options file shown holds only options
the installer knows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.docs.readme import REPO, Block, blocks

ROLES = REPO / "collections" / "retina" / "roles"
#: Variables of the playbooks themselves (playbooks/*.yml), not of a role.
PLAYBOOK_VARS = {
    "retina_nodes",
    "retina_become",
    "retina_rollout_timeout",
    "retina_rollout_wait",
    "preflight_skip_nodes",
}


def role_options() -> set[str]:
    options = set()
    for spec in ROLES.glob("*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            options |= set(entry.get("options", {}))
    return options


def commands_run_by(test_file: Path) -> set[str]:
    """String constants of a test module that reach a call: passed as an argument directly or
    through a module-level name (``INSTALL = "ansible-playbook ..."`` then ``site.run(INSTALL)``),
    also inside an argument (an argv list)."""
    tree = ast.parse(test_file.read_text())
    names = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    run = set()
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        for top in [*call.args, *(k.value for k in call.keywords)]:
            for arg in ast.walk(top):  # also inside an argv list: ["bash", "-c", COMMAND]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    run.add(arg.value)
                elif isinstance(arg, ast.Name) and arg.id in names:
                    run.add(names[arg.id])
    return run


ADMIN_BLOCKS = blocks()
SHELL = [b for b in ADMIN_BLOCKS if b.lang in ("sh", "bash")]


def test_the_admin_sections_are_there_and_show_commands() -> None:
    from tests.docs.readme import admin_text

    text, _ = admin_text()
    for section in (
        "Install on your cluster",
        "Pod-level metrics",
        "Capture",
        "Preflight",
        "Troubleshooting",
    ):
        assert f"\n## {section}\n" in f"\n{text}", f"README.md lacks the section {section!r}"
    assert len(SHELL) >= 6 and sum(len(b.commands) for b in SHELL) >= 10


@pytest.mark.parametrize("block", SHELL, ids=lambda b: f"README.md:{b.line}")
def test_every_command_is_run_by_the_test_its_block_names(block: Block) -> None:
    assert block.tested_by, (
        f"README.md:{block.line}: shell block without a '<!-- tested-by: tests/... -->' line above it; "
        "name the test that runs its commands"
    )
    test_file = REPO / block.tested_by
    assert test_file.is_file() and test_file.name.startswith("test_"), (
        f"README.md:{block.line}: no {test_file}"
    )
    run = commands_run_by(test_file)
    for command in block.commands:
        assert command in run, f"README.md:{block.line}: {block.tested_by} does not run {command!r}"


def test_unmarked_blocks_are_not_shell() -> None:
    """Blocks without a marker are files (yaml); a shell block must say which test runs it."""
    for block in ADMIN_BLOCKS:
        assert block.lang in ("sh", "bash", "yaml"), f"README.md:{block.line}: fence language {block.lang!r}"
        if block.lang == "yaml":
            assert block.tested_by is None


@pytest.mark.parametrize(
    "block",
    [b for b in ADMIN_BLOCKS if b.body.startswith("# options.yml")],
    ids=lambda b: f"README.md:{b.line}",
)
def test_options_files_name_only_installer_options(block: Block) -> None:
    options = yaml.safe_load(block.body)
    assert isinstance(options, dict) and options
    unknown = set(options) - role_options() - PLAYBOOK_VARS
    assert not unknown, f"README.md:{block.line}: not an installer option: {sorted(unknown)}"


def test_the_inventory_example_is_an_inventory() -> None:
    (inventory,) = [b for b in ADMIN_BLOCKS if b.body.startswith("# inventory.yml")]
    data = yaml.safe_load(inventory.body)
    assert set(data["all"]["hosts"]) == {"node-1", "node-2"}
    assert all("ansible_host" in h for h in data["all"]["hosts"].values())
