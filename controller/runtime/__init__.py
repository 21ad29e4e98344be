"""Long-lived threads and the composition root: the loop, operations, leadership, the
health monitor, Kubernetes Events in and out, notifications, and the controller that
wires them together for the API.
"""
