"""groundthink: shared plumbing of the lab (device facts, correctness harness, op registry, gate manifest)."""
