"""Configuration: the settings and the agent registry, loaded and validated once."""
