"""The coordinator's HTTP API: one router per audience (``public``, ``auditor`` reads for any
member, ``silo``, ``admin``), the signed-request middleware, the role dependency and the error
mapping. :func:`coordinator.app.create_app` mounts them."""
