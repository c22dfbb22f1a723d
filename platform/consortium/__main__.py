"""`python -m consortium` runs the `bcfl` command."""

from consortium.cli import main

main()
