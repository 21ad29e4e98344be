"""Tests of the Git parameter source against a real git daemon."""
