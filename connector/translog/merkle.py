"""RFC 9162 Merkle tree hashing: leaf and node hashes, roots, inclusion and consistency proofs.

Leaves hash as SHA-256(0x00 || data), interior nodes as SHA-256(0x01 || left || right), and a
tree of n leaves splits at the largest power of two below n (RFC 9162 section 2.1.1).

A *complete subtree* is named by ``(level, index)``: it covers leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 is a leaf hash. Every range that
appears in a root or a proof decomposes into at most ~log2(n) complete subtrees, so a store
that keeps the hash of every complete subtree answers any root or proof with O(log n) reads.
Generation takes a ``NodeReader`` (any such store); verification needs only hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Coord = tuple[int, int]  # (level, index) of a complete subtree
Range = tuple[int, int]  # [start, end) of leaves


class ProofError(ValueError):
    """A proof does not verify, or was asked for with impossible sizes; the message says which."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(size: int) -> int:
    """The largest power of two strictly below ``size`` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def subtrees_of(start: int, end: int) -> list[Coord]:
    """The complete subtrees of the RFC 9162 tree over leaves [start, end), left to right.

    ``start`` must be aligned as RFC 9162's recursion aligns it (a multiple of the largest
    power of two not above ``end - start``), which holds for every range a proof names.
    """
    coords: list[Coord] = []
    size = end - start
    while size > 0:
        level = size.bit_length() - 1
        coords.append((level, start >> level))
        start += 1 << level
        size -= 1 << level
    return coords


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """The root over complete subtrees given left to right, largest first (RFC 9162 split order)."""
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The leaf ranges whose roots make the inclusion proof of ``index`` in a tree of ``size``, leaf first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(size1: int, size2: int) -> list[Range]:
    """The leaf ranges whose roots make the consistency proof from ``size1`` to ``size2`` (RFC 9162 SUBPROOF)."""
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    ranges: list[Range] = []
    if size1 == size2:
        return ranges
    m, start, end, whole = size1, 0, size2, True
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
            whole = False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


class NodeReader(Protocol):
    """A store of complete-subtree hashes (for trees of at least the size asked)."""

    def node_hashes(self, coords: Iterable[Coord]) -> dict[Coord, bytes]: ...


def range_roots(reader: NodeReader, ranges: Sequence[Range]) -> list[bytes]:
    """The root of each leaf range, from the complete subtrees ``reader`` holds (one read for all)."""
    per_range = [subtrees_of(start, end) for start, end in ranges]
    found = reader.node_hashes({c for coords in per_range for c in coords})
    try:
        return [fold_subtrees([found[c] for c in coords]) for coords in per_range]
    except KeyError as missing:
        raise LookupError(f"the store lacks the subtree {missing.args[0]}") from None


def root(reader: NodeReader, size: int) -> bytes:
    """The root of the first ``size`` leaves (EMPTY_ROOT for size 0)."""
    if size == 0:
        return EMPTY_ROOT
    return range_roots(reader, [(0, size)])[0]


def inclusion_proof(reader: NodeReader, index: int, size: int) -> list[bytes]:
    return range_roots(reader, inclusion_ranges(index, size))


def consistency_proof(reader: NodeReader, size1: int, size2: int) -> list[bytes]:
    return range_roots(reader, consistency_ranges(size1, size2))


class MemoryTree:
    """All complete subtrees of a list of leaf hashes, in memory (tests, bundles, small trees)."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        self.levels[0].append(leaf)
        level, index = 0, len(self.levels[0]) - 1
        while index % 2 == 1:  # a right child completes its parent
            parent = node_hash(self.levels[level][index - 1], self.levels[level][index])
            level, index = level + 1, index // 2
            if len(self.levels) == level:
                self.levels.append([])
            self.levels[level].append(parent)

    def node_hashes(self, coords: Iterable[Coord]) -> dict[Coord, bytes]:
        return {(lv, ix): self.levels[lv][ix] for lv, ix in coords}

    def root(self, size: int | None = None) -> bytes:
        return root(self, self.size if size is None else size)


def frontier_after(
    frontier: list[bytes], size: int, leaf: bytes
) -> tuple[list[bytes], list[tuple[Coord, bytes]]]:
    """Append ``leaf`` as leaf number ``size`` to a tree whose right-edge subtrees are ``frontier``.

    The frontier holds the complete subtrees of the binary decomposition of ``size``, largest
    first. Returns the new frontier and every complete subtree of level >= 1 the leaf completes.
    """
    frontier = [*frontier, leaf]
    completed: list[tuple[Coord, bytes]] = []
    level, index = 0, size
    while index % 2 == 1:
        right = frontier.pop()
        left = frontier.pop()
        parent = node_hash(left, right)
        level, index = level + 1, index // 2
        completed.append(((level, index), parent))
        frontier.append(parent)
    return frontier, completed


def _check_lengths(proof: Sequence[bytes]) -> None:
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError(f"every hash in a proof is {HASH_SIZE} bytes long")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows ``leaf`` at ``index`` in the tree of ``size`` with that root."""
    if index < 0 or size < 0 or index >= size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    if len(leaf) != HASH_SIZE or len(expected_root) != HASH_SIZE:
        raise ProofError(f"a leaf hash and a root are {HASH_SIZE} bytes long")
    _check_lengths(proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if r != expected_root:
        raise ProofError("the inclusion proof leads to a different root")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Raise ProofError unless ``proof`` shows the tree of ``size2`` extends the tree of ``size1``.

    A tree of size 0 has no consistency proof (every tree extends it; there is nothing to check).
    """
    if size1 < 0 or size2 < size1:
        raise ProofError(f"size {size2} cannot extend size {size1}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("trees of the same size need an empty consistency proof")
        if root1 != root2:
            raise ProofError("two different roots for the same tree size")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    _check_lengths(proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than needed")
    if fr != root1:
        raise ProofError(f"the consistency proof does not lead to the root of size {size1}")
    if sr != root2:
        raise ProofError(f"the consistency proof does not lead to the root of size {size2}")


def root_of_leaves(leaves: Iterable[bytes]) -> bytes:
    """The RFC 9162 root of a list of leaf hashes, in one pass with O(log n) memory."""
    stack: list[bytes] = []  # complete subtrees, largest first
    for index, leaf in enumerate(leaves):
        stack.append(leaf)
        while index & 1:
            right = stack.pop()
            stack[-1] = node_hash(stack[-1], right)
            index >>= 1
    return fold_subtrees(stack)


def range_proof_ranges(start: int, end: int, size: int) -> list[Range]:
    """The ranges outside [start, end) whose roots, with the leaves inside, give the root of ``size``.

    In the order ``root_from_range`` consumes them (left to right in the tree).
    """
    if not 0 <= start < end <= size:
        raise ProofError(f"no range proof for [{start}, {end}) in a tree of size {size}")
    ranges: list[Range] = []

    def walk(lo: int, hi: int) -> None:
        if hi <= start or lo >= end:
            ranges.append((lo, hi))
        elif not (start <= lo and hi <= end):
            k = split_point(hi - lo)
            walk(lo, lo + k)
            walk(lo + k, hi)

    walk(0, size)
    return ranges


def range_proof(reader: NodeReader, start: int, end: int, size: int) -> list[bytes]:
    return range_roots(reader, range_proof_ranges(start, end, size))


def root_from_range(
    start: int, end: int, size: int, leaves: Sequence[bytes], proof: Sequence[bytes]
) -> bytes:
    """The root of the tree of ``size`` from the leaves [start, end) and a range proof (ProofError if malformed)."""
    if len(leaves) != end - start:
        raise ProofError(f"expected {end - start} leaves, got {len(leaves)}")
    expected = range_proof_ranges(start, end, size)
    if len(proof) != len(expected):
        raise ProofError(f"the range proof has {len(proof)} hashes where {len(expected)} are needed")
    _check_lengths(proof)
    supplied = iter(proof)

    def walk(lo: int, hi: int) -> bytes:
        if hi <= start or lo >= end:
            return next(supplied)
        if start <= lo and hi <= end:
            return root_of_leaves(leaves[lo - start : hi - start])
        k = split_point(hi - lo)
        left = walk(lo, lo + k)
        return node_hash(left, walk(lo + k, hi))

    return walk(0, size)
