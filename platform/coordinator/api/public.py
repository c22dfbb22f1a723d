"""Endpoints outside ``/api/``: no signature needed."""

from __future__ import annotations

from fastapi import APIRouter

from coordinator.schemas import Health

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health, summary="Liveness (no authentication)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
