"""Whole consortia on one machine: Fabric, anvil and Kubo bring-up, one process supervisor, `bcfl demo`."""
