"""``python -m devnet.red_team``: see :mod:`devnet.red_team.cli`."""

from devnet.red_team.cli import main

main()
