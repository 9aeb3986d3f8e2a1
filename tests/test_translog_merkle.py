"""RFC 9162 hashing and proofs against transparency-dev's vectors, and against our own tree builder."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from connector.translog.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    ProofError,
    consistency_proof,
    fold_subtrees,
    frontier_after,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "data" / "merkle-vectors" / "testdata"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_the_vectors_are_all_there() -> None:
    assert len(INCLUSION) == 98
    assert len(CONSISTENCY) == 98
    assert (VECTORS.parent / "LICENSE").read_text().startswith("\n                                 Apache")


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    v = _load(path)
    proof = [_b64(p) for p in v["proof"] or []]

    def check() -> None:
        verify_inclusion(_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, _b64(v["root"]))

    if v["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector(path: Path) -> None:
    v = _load(path)
    proof = [_b64(p) for p in v["proof"] or []]

    def check() -> None:
        verify_consistency(v["size1"], v["size2"], proof, _b64(v["root1"]), _b64(v["root2"]))

    if v["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


def _tree(n: int) -> MemoryTree:
    return MemoryTree(leaf_hash(i.to_bytes(4, "big")) for i in range(n))


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162's recursive definition, written the slow way."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _reference_root(leaves[:k]) + _reference_root(leaves[k:])).digest()


def test_generated_proofs_verify_for_every_index_and_size() -> None:
    tree = _tree(70)
    leaves = tree.levels[0]
    for size in range(1, 71):
        assert tree.root(size) == _reference_root(leaves[:size])
        for index in range(size):
            verify_inclusion(leaves[index], index, size, inclusion_proof(tree, index, size), tree.root(size))
        for first in range(1, size + 1):
            proof = consistency_proof(tree, first, size)
            verify_consistency(first, size, proof, tree.root(first), tree.root(size))


def test_a_proof_for_the_wrong_leaf_or_root_fails() -> None:
    tree = _tree(13)
    proof = inclusion_proof(tree, 5, 13)
    with pytest.raises(ProofError, match="different root"):
        verify_inclusion(tree.levels[0][6], 5, 13, proof, tree.root())
    with pytest.raises(ProofError):
        verify_consistency(7, 13, consistency_proof(tree, 7, 13), tree.root(6), tree.root())


def test_the_frontier_gives_the_same_root_as_the_whole_tree() -> None:
    tree = _tree(100)
    frontier: list[bytes] = []
    for size, leaf in enumerate(tree.levels[0]):
        frontier, completed = frontier_after(frontier, size, leaf)
        for (level, index), h in completed:
            assert tree.levels[level][index] == h
        assert fold_subtrees(frontier) == tree.root(size + 1)


def test_range_proofs_rebuild_the_root_from_any_slice_of_leaves() -> None:
    from connector.translog.merkle import range_proof, root_from_range, root_of_leaves

    tree = _tree(45)
    leaves = tree.levels[0]
    for size in (1, 2, 7, 16, 45):
        assert root_of_leaves(leaves[:size]) == tree.root(size)
        for start in range(size):
            for end in range(start + 1, size + 1):
                proof = range_proof(tree, start, end, size)
                assert root_from_range(start, end, size, leaves[start:end], proof) == tree.root(size)
    proof = range_proof(tree, 10, 20, 45)
    swapped = leaves[10:20]
    swapped[3], swapped[4] = swapped[4], swapped[3]
    assert root_from_range(10, 20, 45, swapped, proof) != tree.root()
    with pytest.raises(ProofError):
        root_from_range(10, 20, 45, leaves[10:19], proof)
