"""Steps of the WSSS / WSOL workflow; each module with a `main` runs as `python -m wsss_steps.NAME`."""

__version__ = "0.1.0"
