"""The capture operator (kopf): Capture resources -> Jobs, status, cleanup. See ``handlers``."""
