"""The kernel every part of bcfl may import: errors and codes, canonical JSON and hashing, atomic
files, the protocol's vocabulary and typed ledger records. Imports nothing of ours and nothing heavy
(only the standard library, typing_extensions and cryptography)."""
