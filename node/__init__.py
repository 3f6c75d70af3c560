"""hubbub chat node: TCP chat sessions relayed through Redis."""

__version__ = "0.1.0"
