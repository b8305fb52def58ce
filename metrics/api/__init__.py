"""The HTTP API: ``create_app`` builds the FastAPI application (``metrics serve`` runs it)."""

from metrics.api.app import create_app

__all__ = ["create_app"]
