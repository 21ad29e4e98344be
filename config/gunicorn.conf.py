"""gunicorn settings of `conductor run` (read by controller/api/server.py).

One worker process with threads: the reconcile loop, the watches and the API share one
memory and one Prometheus registry, so no multiprocess metrics mode is needed. The bind
address, thread count and TLS files come from conductor's own configuration
(CONDUCTOR_API_HOST/PORT/THREADS/CERTFILE/KEYFILE), which wins over this file.
"""

workers = 1
worker_class = "gthread"
threads = 8
# A pass may hold a request (POST /api/up) up to CONDUCTOR_API_SYNC_TIMEOUT (30 s).
timeout = 120
# SIGTERM: stop taking requests, let the current pass finish, then exit.
graceful_timeout = 90
keepalive = 5
accesslog = "-"
# No control socket: replicas or tests on one host would fight over its default path, and a
# read-only root filesystem has no room for it.
control_socket_disable = True
