"""The harness beside the library: fault scenarios, benchmarks, the local fake-autoscaling cluster and helpers the
tests share (free ports, a token-auth Ray head, a loopback S3 server).

``trcgl`` never imports this package (``tests/test_lint.py`` checks it); a cluster job imports only ``trcgl``.
"""
