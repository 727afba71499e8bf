"""User agents that follow the protocol: shells around the core's poll flow.

httpx transports, a requests adapter and operation handles all drive the
same generator (:func:`repoll.core._poll.poll_flow`) with one of two runners
(``_runners``): they carry requests, the flow decides. What a poll carries
(:func:`~repoll.core._poll.poll_headers`) and whether a response is to be
followed (:func:`~repoll.core._poll.needs_polling`) are the core's decisions
too. Each client takes ``sleep=`` (the runner's only contact with time), so
tests need no process-wide switch.
"""
