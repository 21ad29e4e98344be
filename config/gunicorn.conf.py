"""gunicorn settings of `conductor run` (read by controller/serving.py).

One worker process: the reconcile loop, the watches and the API share one memory and one
Prometheus registry, so no multiprocess metrics mode is needed. The worker is gunicorn's
asyncio (ASGI) worker with conductor's envelope for gunicorn's own errors
(controller/api/worker.py): a connection costs no thread while its request is arriving,
so slow or idle clients cannot starve the API; the resources' blocking work runs on
CONDUCTOR_API_THREADS threads. The bind address, thread count and TLS files come from
conductor's own configuration (CONDUCTOR_API_HOST/PORT/THREADS/CERTFILE/KEYFILE), which
wins over this file.
"""

workers = 1
worker_class = "controller.api.worker.Worker"
# Open connections (idle, arriving, streaming) the worker keeps at once.
worker_connections = 2000
# A pass may hold a request (POST /api/up) up to CONDUCTOR_API_SYNC_TIMEOUT (30 s).
timeout = 120
# SIGTERM: stop taking requests, end event streams, let the current pass finish, exit.
graceful_timeout = 90
keepalive = 5
# gunicorn's limits on the request line and headers; beyond them the answer is 414/431
# in the API's envelope.
limit_request_line = 4094
limit_request_field_size = 8190
accesslog = "-"
# No control socket: replicas or tests on one host would fight over its default path, and a
# read-only root filesystem has no room for it.
control_socket_disable = True
