"""Alembic migrations of the coordinator database (run by ``Database.upgrade`` and ``bcfl coordinator db upgrade``)."""
