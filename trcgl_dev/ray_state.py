"""Ray's State API, asked of the Ray this process is connected to.

``ray.util.state.list_actors()`` without an address autodetects the cluster, and autodetection fails ("Found
multiple active Ray instances") whenever another Ray runs on the machine: in the test suite the pipeline job's
token-auth head and the local autoscaling cluster run beside the session's Ray. Every State API call in tests and
scenarios goes through here, with this process's GCS address.
"""

from __future__ import annotations

from typing import Any

from trcgl.ray_runtime import connected_address


def list_actors(filters: list[tuple[str, str, str]], **kwargs: Any) -> list[Any]:
    """``ray.util.state.list_actors`` on the Ray this process is connected to.

    Args:
        filters: State API filters, e.g. ``[("class_name", "=", "RayTrainWorker")]``.
        **kwargs: passed on (``limit``, ``detail``, ``raise_on_missing_output``).

    Raises:
        RuntimeError: this process is not connected to a Ray.
    """
    from ray.util import state

    address = connected_address()
    if address is None:
        raise RuntimeError("list_actors: this process is not connected to a Ray (call ray.init first)")
    return state.list_actors(address=address, filters=filters, **kwargs)
