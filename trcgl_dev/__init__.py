"""The harness beside the library: fault scenarios (:mod:`trcgl_dev.faults`), benchmarks
(:mod:`trcgl_dev.benchmarks`), the local fake-autoscaling cluster (:mod:`trcgl_dev.local_cluster`) and helpers the
tests and benchmarks share: a token-auth Ray head (:mod:`trcgl_dev.ray_head`) and a loopback S3 server
(:mod:`trcgl_dev.s3`). Free ports come from the library's :func:`trcgl.ray_runtime.free_port`.

``trcgl`` never imports this package (``tests/test_lint.py`` checks it); a cluster job imports only ``trcgl``.
"""
