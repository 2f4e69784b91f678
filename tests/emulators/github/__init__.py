"""The github emulator: `python -m tests.emulators.github --port 0 ...` (see `server.py`)."""
