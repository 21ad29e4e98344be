"""One pass for one app instance, synchronous: live state, apply, prune, report."""
