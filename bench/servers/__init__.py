"""Reference servers the platform is measured against (each run in its own process/venv)."""
