"""Shared pytest configuration (markers `slow` and `lava` are declared in pyproject.toml)."""
