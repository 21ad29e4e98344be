"""Clients of a running conductor: the HTTP client, the command line's client commands,
the MCP server and the `conductor init` scaffold.

This floor talks to a conductor over HTTP only (it may be remote): it imports the settings,
the error vocabulary and pure model modules, never the adapters, the reconcile engine, the
runtime or the API (tests/unit/test_layers.py says so).
"""
