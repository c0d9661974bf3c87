"""Algorithms as small frozen objects over explicit state: ``init(fed)``, ``round(state, t, fed, send)``."""

from fedsim.algorithms.async_gossip import AsyncGossip, AsyncGossipState
from fedsim.algorithms.fedavg import FedAvg, FedAvgState, aggregate, sample_clients
from fedsim.algorithms.gossip import Gossip, GossipState, consensus_distance

__all__ = ["AsyncGossip", "AsyncGossipState", "FedAvg", "FedAvgState", "Gossip", "GossipState", "aggregate",
           "consensus_distance", "sample_clients"]
