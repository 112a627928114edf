"""hsmpool."""
