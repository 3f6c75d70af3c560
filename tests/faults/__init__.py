"""The fault suite: hubbub under faults and bad input (see docs/RELIABILITY.md)."""
