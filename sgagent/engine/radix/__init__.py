from .tree import RadixTree, Node

__all__ = ["RadixTree", "Node"]
