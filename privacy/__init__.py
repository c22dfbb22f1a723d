"""Differential privacy (Opacus, accounting, budgets) and homomorphic encryption (TenSEAL CKKS)."""
