"""The 7-service, 3-level graph every contestant of benchmarks/peers.py brings up."""

# name -> (startup delay in seconds, dependencies)
GRAPH = {
    "l0a": (0.3, ()), "l0b": (0.3, ()),
    "l1a": (0.2, ("l0a", "l0b")), "l1b": (0.2, ("l0a", "l0b")), "l1c": (0.2, ("l0a", "l0b")),
    "l2a": (0.1, ("l1a",)), "l2b": (0.1, ("l1b",)),
}
LEVELS = [["l0a", "l0b"], ["l1a", "l1b", "l1c"], ["l2a", "l2b"]]
