"""The hospital's agent: local data, DP training, encryption, peer evaluation and voting, attestation."""
