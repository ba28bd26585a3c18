"""Fault scenarios of issue #13, one module per group of defect classes, run by
``benchmarks/store_faults.py`` and (one small case each) by ``tests/kv/store/test_store_faults.py``.

Every scenario takes an :class:`~benchmarks.faults.common.Env` (the tiny seeded model, its encoder, a
loopback ``redis-server``, a scratch folder) and returns :class:`tests.support.faults.Outcome`
objects: cases tried, cases held, and what went wrong.

- :mod:`.integrity`: (1) damaged or planted chunks, (3) weights changed in place.
- :mod:`.threads`: (2) 8 threads on one answerer with presses.
- :mod:`.disk`: (4) disk store edge cases.
- :mod:`.degrade`: (5) failed writes and dead tiers.
- :mod:`.inputs`: (6) URLs and tenants, (7) CLI errors, (8) bad inputs.
- :mod:`.load`: (9) 8 processes × N requests over shared disk and Redis stores, one tier down.
"""
