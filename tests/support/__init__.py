"""What tests and benchmarks share: namespace pairs, nginx, wrk, /proc accounting, packets, daemons.

Imported as ``tests.support.<module>`` (the repository root on sys.path: pytest's rootdir, or
``python -m bench.NAME`` run from it).
"""
