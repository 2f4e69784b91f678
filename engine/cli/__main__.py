"""`python -m engine.cli`: the same as the `ipai` command."""

from engine.cli.main import main

main()
