"""Durable stores: the event store and the parameter history."""
