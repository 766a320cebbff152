"""Variant: autodiscover_tasks with the installed apps passed explicitly (lazily)."""

import os

from celery import Celery
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")  # the kit lays its broker and backend over this app; keep this line

# Why: namespace="CELERY" reads exactly the CELERY_ settings and maps them to Celery's names
# (CELERY_TASK_ACKS_LATE -> task_acks_late); without it Celery reads the old names and skips the new ones.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(lambda: settings.INSTALLED_APPS)  # the Celery 4 docs' form
