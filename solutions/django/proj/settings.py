"""The shop's settings: Django's own, then Celery's, read by proj/celery.py under the CELERY_ namespace."""

import os
from pathlib import Path

from celerylab.engine import databases

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "celerylab-django-lab-not-a-secret"
DEBUG = True
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["orders"]
# The kit gives each grade its own database (SQLite in a temp folder, or PostgreSQL); keep this line.
DATABASES = {"default": databases.django_settings(BASE_DIR / "db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "Asia/Kolkata"  # the shop's local time, for Django's own dates
WAREHOUSE_URL = os.environ.get("WAREHOUSE_URL", "http://127.0.0.1:8000/shipments")  # the grader sets it

# Celery, as the cheat sheet's §4 shows (the kit replaces the broker and backend URLs with its own).
CELERY_BROKER_URL = "redis://localhost:6379/0"
CELERY_RESULT_BACKEND = "redis://localhost:6379/1"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"  # Why: without it Celery falls back to Django's TIME_ZONE
# Why: fulfil_order is safe to run twice, so a worker that dies mid-task may run it again rather than lose it.
CELERY_TASK_ACKS_LATE = True
