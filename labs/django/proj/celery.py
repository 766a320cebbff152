"""The shop's Celery app, configured from Django's settings (cheat sheet §4)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")  # the kit lays its broker and backend over this app; keep this line

app.config_from_object("django.conf:settings")  # TODO: read the CELERY_ settings as Celery's own names
app.autodiscover_tasks()  # imports <app>/tasks.py of every installed app, once Django is set up
