"""The Django example under ASGI: ``uvicorn examples.django_site.asgi:application``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")

import repoll

application = repoll.django_app()  # get_asgi_application(), options from settings.REPOLL
