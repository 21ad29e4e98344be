"""The REST API (Falcon): thin resources over the controller, errors mapped in one place."""
