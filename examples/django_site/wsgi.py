"""The Django example's WSGI application, served through repoll's ASGI layer.

``gunicorn -k uvicorn_worker.UvicornWorker -w 4 examples.django_site.wsgi:application``
(with ``REPOLL_STORE=sqlite:///ops.db``: the workers share it). Django's sync
views run in the bridge's threads, exactly as under a WSGI server; held polls
and operation URLs are answered on the event loop and take no thread.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")

from django.core.wsgi import get_wsgi_application

import repoll

application = repoll.django_app(get_wsgi_application())
