"""`python -m bcfl_cli` runs the `bcfl` command."""

from bcfl_cli.main import main

main()
