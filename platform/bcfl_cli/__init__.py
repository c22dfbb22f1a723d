"""The root `bcfl` command: mounts each party's command group."""
