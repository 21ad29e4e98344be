"""The outside world, knowing nothing of passes or HTTP.

Kubernetes (the only module that imports the client), watches, the CRD, Git and the
resource as parameter sources, the durable stores and the Prometheus registry.
"""
