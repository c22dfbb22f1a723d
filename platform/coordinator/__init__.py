"""The coordinator service: admin, silo and auditor APIs, trial lifecycle, round scheduler, aggregation."""
