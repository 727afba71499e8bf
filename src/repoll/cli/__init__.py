"""The ``repoll`` command: ``demo``, ``serve``, ``worker``, ``request``, ``wait``, ``check``."""
