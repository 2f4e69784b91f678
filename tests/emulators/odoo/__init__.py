"""The odoo emulator: `python -m tests.emulators.odoo --port 0 ...` (see `server.py`)."""
