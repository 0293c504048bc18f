"""Slow, obviously-correct PyTorch twins of every kernel: the oracle for tests and the CPU path."""
