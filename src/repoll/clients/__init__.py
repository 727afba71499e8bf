"""User agents that follow the protocol: shells around the core's poll flow.

httpx transports, a requests adapter and operation handles all drive the
same generator (:func:`repoll.core._poll.poll_flow`) with one of two runners
(``_runners``): they carry requests, the flow decides.
"""
