"""The fault suite: each promise in docs/guarantees.md, proven with real processes and Redis."""
