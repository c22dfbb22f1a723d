"""The consortium contract (pure, deterministic) and its two hosts: embedded (SQLite) and Fabric."""
