"""retina_capture."""
