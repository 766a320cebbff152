"""The shop's Django project. The Celery app is imported here so it exists whenever Django starts, and
``@shared_task`` binds to it (``celery -A proj worker`` finds it here too)."""

from .celery import app as celery_app

__all__ = ("celery_app",)
