"""Pure data and rules: no I/O, no threads, no clock read implicitly.

Objects, timestamps, parameters, rendering, planning, health and redaction: what a pass
decides, written so that a unit test needs nothing but Python to check it.
"""
