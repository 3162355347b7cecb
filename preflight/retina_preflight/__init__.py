"""retina-preflight: tells, node by node, which Retina agent plugins will work and why not.

The checks live in the Ansible collection's module_utils (collections/retina/plugins/module_utils/
preflight), reached here as ``retina_preflight.core`` through a symlink, so the CLI and the
``retina.observability.retina_preflight`` module run one code path.
"""

from retina_preflight.core import PreflightOptions, render_table, run_preflight

__all__ = ["PreflightOptions", "render_table", "run_preflight"]
