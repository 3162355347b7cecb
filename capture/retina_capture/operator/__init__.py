"""The capture operator (kopf): Capture resources -> Jobs, status, cleanup. See ``handlers``.

Importing the package registers the handlers, so ``kopf run -m retina_capture.operator`` (the
command the installer's Deployment uses) runs the operator.
"""

from retina_capture.operator import (
    handlers,  # noqa: F401  (registers the kopf handlers)
    triggers,  # noqa: F401,E402  (CaptureTriggers, webhook receiver)
)
