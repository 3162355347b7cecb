"""Write the plugin catalogue into the static YAML that cannot import it.

``.venv/bin/python scripts/plugin_catalogue.py`` rewrites, from
``collections/retina/plugins/module_utils/preflight/catalogue.py``:

- the ``plugins`` option (choices, default) in the ``retina_preflight`` module's DOCUMENTATION;
- ``agent_plugins`` and ``preflight_plugins`` (choices, default) in the roles' argument specs;
- the ``agent_plugins`` and ``preflight_plugins`` defaults of the agent and preflight roles;
- ``__agent_plugin_capabilities`` in the agent role's vars.

``--check`` writes nothing and exits 1 naming each file that differs (tests run it), so a
catalogue change that was not written out fails the suite instead of drifting.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLLECTION = REPO / "collections" / "retina"
CATALOGUE = COLLECTION / "plugins" / "module_utils" / "preflight" / "catalogue.py"


def load_catalogue(path: Path = CATALOGUE):
    """The catalogue module, loaded from its file (no install or Ansible needed)."""
    spec = importlib.util.spec_from_file_location("retina_plugin_catalogue", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flow_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the block that starts at ``start`` (lines indented deeper than ``indent``)."""
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    return end


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _find_key(lines: list[str], key: str, path: str) -> int:
    pattern = re.compile(rf"^\s*{re.escape(key)}:\s*(#.*)?$")
    found = [i for i, line in enumerate(lines) if pattern.match(line)]
    if len(found) != 1:
        raise SystemExit(f"{path}: expected one '{key}:' block, found {len(found)}")
    return found[0]


def set_option_fields(text: str, option: str, fields: dict[str, str], path: str) -> str:
    """In the block ``option:``, replace the one-line value of each of ``fields``."""
    lines = text.split("\n")
    start = _find_key(lines, option, path)
    end = _block_end(lines, start, _indent(lines[start]))
    for name, value in fields.items():
        pattern = re.compile(rf"^(\s*){re.escape(name)}:\s.*$")
        hits = [i for i in range(start + 1, end) if pattern.match(lines[i])]
        if len(hits) != 1:
            raise SystemExit(f"{path}: '{option}' should hold one one-line '{name}:', found {len(hits)}")
        i = hits[0]
        lines[i] = f"{pattern.match(lines[i]).group(1)}{name}: {value}"
    return "\n".join(lines)


def set_block(text: str, key: str, body: list[str], path: str) -> str:
    """Replace what is nested under the top-level ``key:`` with ``body`` (already indented)."""
    lines = text.split("\n")
    start = _find_key(lines, key, path)
    end = _block_end(lines, start, _indent(lines[start]))
    while end > start + 1 and not lines[end - 1].strip():  # keep the blank lines after the block
        end -= 1
    return "\n".join(lines[: start + 1] + body + lines[end:])


def targets(cat) -> dict[Path, Callable[[str, str], str]]:
    """Each generated file and how to rewrite it from the catalogue ``cat``."""
    names = flow_list(cat.PLUGIN_NAMES)
    defaults = flow_list(cat.DEFAULT_PLUGINS)
    roles = COLLECTION / "roles"

    def module(text: str, path: str) -> str:
        # The module gives verdicts for every plugin unless told otherwise. Only DOCUMENTATION
        # is rewritten (RETURN has a "plugins" key too).
        documentation, examples = text.split('\nEXAMPLES = r"""', 1)
        fields = {"choices": names, "default": names}
        return set_option_fields(documentation, "plugins", fields, path) + '\nEXAMPLES = r"""' + examples

    def agent_spec(text: str, path: str) -> str:
        return set_option_fields(text, "agent_plugins", {"choices": names, "default": defaults}, path)

    def preflight_spec(text: str, path: str) -> str:
        return set_option_fields(text, "preflight_plugins", {"choices": names, "default": defaults}, path)

    def agent_defaults(text: str, path: str) -> str:
        return set_block(text, "agent_plugins", [f"  - {name}" for name in cat.DEFAULT_PLUGINS], path)

    def preflight_defaults(text: str, path: str) -> str:
        quoted = ", ".join(f"'{name}'" for name in cat.DEFAULT_PLUGINS)
        new, count = re.subn(
            r"^(preflight_plugins: \"\{\{ agent_plugins \| default\()\[[^\]]*\](\) \}\}\")$",
            lambda m: f"{m.group(1)}[{quoted}]{m.group(2)}",
            text,
            flags=re.M,
        )
        if count != 1:
            raise SystemExit(f"{path}: expected one preflight_plugins line defaulting to agent_plugins")
        return new

    def agent_vars(text: str, path: str) -> str:
        body = [f"  {spec.name}: {flow_list(spec.capabilities)}" for spec in cat.PLUGINS.values()]
        return set_block(text, "__agent_plugin_capabilities", body, path)

    return {
        COLLECTION / "plugins" / "modules" / "retina_preflight.py": module,
        roles / "agent" / "meta" / "argument_specs.yml": agent_spec,
        roles / "preflight" / "meta" / "argument_specs.yml": preflight_spec,
        roles / "agent" / "defaults" / "main.yml": agent_defaults,
        roles / "preflight" / "defaults" / "main.yml": preflight_defaults,
        roles / "agent" / "vars" / "main.yml": agent_vars,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    cat = load_catalogue()
    stale = []
    for path, rewrite in targets(cat).items():
        old = path.read_text()
        new = rewrite(old, str(path.relative_to(REPO)))
        if new == old:
            continue
        stale.append(str(path.relative_to(REPO)))
        if not args.check:
            path.write_text(new)
    if args.check and stale:
        print("out of date with the plugin catalogue (run scripts/plugin_catalogue.py): " + ", ".join(stale))
        return 1
    for name in stale:
        print(f"rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
