"""Code shared by the agent (``retina_agent``) and the capture tools (``retina_capture``).

Kept dependency-free (standard library only) so every component can import it without pulling
in another component or creating an import cycle.
"""
