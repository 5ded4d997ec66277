"""The abuse suite: attacks on one process, bounded and on loopback only (issue #11)."""
