"""groundthink: shared plumbing of the lab (device facts, correctness harness, op specs and registry, the gate)."""
