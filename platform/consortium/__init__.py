"""Shared infrastructure every party uses: identities, ledger clients, artifact stores, wire models."""
