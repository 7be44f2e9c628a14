"""The wkr-celery benchmark against its peers: ``python -m benchmarks --help``.

Not part of the installed package; run it from a checkout after ``pip install '.[bench]'``.
"""
