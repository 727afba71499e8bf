"""Settings of the Django example: the least a project has, plus ``REPOLL``.

``$REPOLL_STORE`` picks the store (memory by default; SQLite for several
processes); ``$EXAMPLE_DATABASE_URL=postgresql://...`` puts Django's own
database on PostgreSQL (SQLite in a temporary file otherwise).
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlsplit

SECRET_KEY = "example-only-not-secret"  # noqa: S105 - an example
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_site.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
TEMPLATES: list[dict[str, object]] = []
USE_TZ = True

_database = os.environ.get("EXAMPLE_DATABASE_URL")
if _database:
    _url = urlsplit(_database)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _url.path.lstrip("/"),
            "USER": _url.username or "postgres",
            "HOST": _url.hostname or "127.0.0.1",
            "PORT": _url.port or 5432,
            "OPTIONS": {"application_name": os.environ.get("EXAMPLE_DATABASE_APP", "django")},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tempfile.gettempdir(), "repoll-django-example.sqlite3"),
        }
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}

# repoll's options: those of repoll.PollingServer, plus "threads" under WSGI.
REPOLL = {"store": os.environ.get("REPOLL_STORE", "memory://")}
