"""The ASGI shell around the core: middleware, deferral, the engine, holds.

It translates requests into the core's inputs and the core's answers into
ASGI messages, and keeps what must be shared between requests (the store,
the executor, held polls). Decisions it needs come from :mod:`repoll.core`.
"""
