"""A flow run: the ``materialize`` flow (raw -> processed -> analytics as ``@materialize``
tasks), its task bodies, cache policy, artifacts and partition parallelism, and the
scheduled ``fetch`` flow."""
