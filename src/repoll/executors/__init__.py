"""Where deferred work runs: in the server's process, or on Celery workers."""
