"""Old home of `cpu_devices`; it lives in the public module `jaxconv.devices` now."""

from jaxconv.devices import cpu_devices  # noqa: F401
