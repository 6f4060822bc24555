"""Cluster-wide flow limits shared through Redis (``run --cluster URL``).

Flow rules with ``clusterMode: true`` share their threshold across every daemon with the same Redis and
``--app``: the kernel judges each request against a local budget that ``ClusterClient`` leases from Redis
(``lease.lua``), and falls back to local enforcement when Redis fails. See docs/cluster.md.
"""

from sentinel_ebpf.cluster.client import ClusterClient
from sentinel_ebpf.cluster.lease import RuleLease
from sentinel_ebpf.cluster.store import (
    LeaseReply,
    LeaseRequest,
    LeaseStore,
    RedisLeaseStore,
    check_url,
    connect,
)

__all__ = [
    "ClusterClient",
    "LeaseReply",
    "LeaseRequest",
    "LeaseStore",
    "RedisLeaseStore",
    "RuleLease",
    "check_url",
    "connect",
]
