"""retina_agent."""
