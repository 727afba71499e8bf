"""Where operations live: one small interface (``_store``), four backends.

Memory (tests, one process), SQLite (the embedded default, one host),
Redis and PostgreSQL (several instances). Every backend passes the same
contract suite (``tests/test_store_contract.py``).
"""
