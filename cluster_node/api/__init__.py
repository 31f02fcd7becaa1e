"""The operations API: GraphQL admin and user APIs (MongooseIM-compatible), Prometheus metrics,
``/health`` and ``/ready``, served over HTTP by :mod:`cluster_node.api.http`."""
