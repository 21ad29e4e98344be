"""Shared test support: the local cluster and the example app, a real controller process,
the API test client, a Git server, the counting proxy, image builds, and `wait_for`.

Test modules import from here, never from one another, so that a test file can be read,
moved or deleted on its own.
"""
