"""fedsim: a fast, reproducible simulator for federated and decentralized learning."""

__version__ = "0.1.0"
