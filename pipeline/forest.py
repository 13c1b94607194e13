"""Union-find: the groups of `dedup` (near-duplicates), `split` (sources that must stay together)
and people (clips of one person)."""

from __future__ import annotations

from collections.abc import MutableMapping, MutableSequence
from typing import TypeVar

Item = TypeVar("Item")


def root(parent: MutableSequence[Item] | MutableMapping[Item, Item], item: Item) -> Item:
    """The root of `item`'s tree in the forest `parent` (item -> parent; a root is its own),
    halving the path on the way so later lookups are short."""
    while parent[item] != item:
        parent[item] = parent[parent[item]]
        item = parent[item]
    return item
