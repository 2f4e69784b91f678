"""The ga4 emulator: `python -m tests.emulators.ga4 --port 0 ...` (see `server.py`)."""
