"""The protocol core: every decision, no I/O.

Header fields (``_headers``), the operation's states and transitions
(``_status``), its record (``_model``), what the server answers
(``_replies``), where operation URLs point (``_origin``), how long a client
waits (``_pacing``), the server's settings (``_config``), who is
admitted (``_admission``), which processes' work is lost (``_liveness``),
what particular clients need (``_profiles``) and the client's poll flow (``_poll``). Pure
functions and small state machines: nothing here imports asyncio, a web
framework, an HTTP client or a store driver (``tests/test_layers.py``
checks), so every rule is tested without a server or a clock.
"""
