"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Everything here is pure: it works on hashes already in memory. Stores keep the
hashes of *complete* subtrees ("nodes") keyed by ``(level, index)``, where the
node ``(l, i)`` covers leaves ``[i * 2**l, (i + 1) * 2**l)``. Every hash that a
proof of a tree of any size needs is either such a node or the hash of a
right-edge range ``[begin, size)``, which folds from at most ``log2(size)``
nodes (:func:`decompose`). So a proof costs O(log n) node reads and never a
rebuild of the tree.

Invariants:

* leaf hash = SHA-256(0x00 ‖ leaf bytes); node hash = SHA-256(0x01 ‖ left ‖ right);
  the empty tree's root is SHA-256("") (RFC 6962 §2.1).
* Proof hashes are ordered as RFC 9162 §2.1.3 and §2.1.4 define them (bottom-up).

Example::

    f = Frontier(); [f.append(leaf_hash(b)) for b in (b"a", b"b", b"c")]
    proof = prove_inclusion([leaf_hash(b) for b in (b"a", b"b", b"c")], 1, 3)
    verify_inclusion(leaf_hash(b"b"), 1, 3, proof, f.root())
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from ledger.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "Frontier",
    "NodeId",
    "compact_ids",
    "consistency_ranges",
    "decompose",
    "fold_nodes",
    "fold_range",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "node_key",
    "plan_nodes",
    "prove_consistency",
    "prove_inclusion",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# (level, index): the complete subtree over leaves [index << level, (index + 1) << level).
NodeId = tuple[int, int]

_LEAF_PREFIX = hashlib.sha256(b"\x00")
_NODE_PREFIX = hashlib.sha256(b"\x01")


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash of ``data``."""
    h = _LEAF_PREFIX.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash of two child hashes."""
    h = _NODE_PREFIX.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def node_key(level: int, index: int) -> int:
    """One integer per node, for stores that key nodes by a single column."""
    return (index << 6) | level


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def decompose(begin: int, end: int) -> list[NodeId]:
    """The complete subtrees that cover ``[begin, end)``, left to right.

    ``begin`` must be aligned as RFC 6962 splits align it: a multiple of the
    largest power of two not exceeding ``end - begin``'s own top bit. Every range
    that a proof or a root needs satisfies this.
    """
    if not 0 <= begin <= end:
        raise ValueError(f"bad range [{begin}, {end})")
    nodes: list[NodeId] = []
    pos, remaining = begin, end - begin
    while remaining:
        level = remaining.bit_length() - 1
        if pos & ((1 << level) - 1):
            raise ValueError(f"range [{begin}, {end}) is not aligned for decomposition")
        nodes.append((level, pos >> level))
        pos += 1 << level
        remaining -= 1 << level
    return nodes


def compact_ids(begin: int, end: int) -> list[NodeId]:
    """The compact range ``[begin, end)``: its fewest complete subtrees, left to right.

    Any ``0 <= begin <= end`` (unlike :func:`decompose`): the subtrees grow from
    ``begin`` and shrink towards ``end``. A :class:`Frontier` of size ``begin``
    takes them, in order, with :meth:`Frontier.append_subtree`.
    """
    if not 0 <= begin <= end:
        raise ValueError(f"bad range [{begin}, {end})")
    left: list[NodeId] = []
    right: list[NodeId] = []
    level = 0
    while begin < end:
        if begin & 1:
            left.append((level, begin))
            begin += 1
        if end & 1 and begin < end:
            right.append((level, end - 1))
            end -= 1
        begin >>= 1
        end >>= 1
        level += 1
    return left + right[::-1]


class CompactRange:
    """The hashes of :func:`compact_ids` ``(begin, end)`` as leaves are appended at ``end``."""

    __slots__ = ("_nodes", "begin", "end")

    def __init__(self, begin: int) -> None:
        if begin < 0:
            raise ValueError(f"bad range start {begin}")
        self.begin = self.end = begin
        self._nodes: list[tuple[int, bytes]] = []  # (level, hash), left to right

    def append(self, leaf: bytes) -> None:
        nodes, h, level = self._nodes, leaf, 0
        self.end += 1
        # The new node pairs with the one to its left when both lie in the range and
        # their parent is aligned: the range's end is a multiple of the parent's width.
        while nodes and nodes[-1][0] == level and not self.end & ((2 << level) - 1):
            h = node_hash(nodes.pop()[1], h)
            level += 1
        nodes.append((level, h))

    @property
    def hashes(self) -> list[bytes]:
        return [h for _, h in self._nodes]


def fold_range(hashes: Sequence[bytes]) -> bytes:
    """Hash of a range from the hashes of its :func:`decompose` nodes.

    Each node is smaller than every node to its left, so the RFC 6962 split
    always falls just before the last remaining node: fold from the right.
    """
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make up the inclusion proof (RFC 6962 PATH)."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is outside a tree of size {size}")
    out: list[tuple[int, int]] = []
    begin, end = 0, size
    while end - begin > 1:
        k = _split(end - begin)
        if index < begin + k:
            out.append((begin + k, end))
            end = begin + k
        else:
            out.append((begin, begin + k))
            begin += k
    out.reverse()
    return out


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make up the consistency proof (RFC 6962 PROOF)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"cannot prove {old_size} consistent with {new_size}")
    if old_size in (0, new_size):
        return []
    out: list[tuple[int, int]] = []
    m, begin, end, complete = old_size, 0, new_size, True
    while m != end - begin:
        k = _split(end - begin)
        if m <= k:
            out.append((begin + k, end))
            end = begin + k
        else:
            out.append((begin, begin + k))
            m -= k
            begin += k
            complete = False
    if not complete:
        out.append((begin, end))
    out.reverse()
    return out


def plan_nodes(ranges: Iterable[tuple[int, int]]) -> tuple[list[list[NodeId]], set[NodeId]]:
    """The nodes each range folds from, and all of them: what one store read must fetch."""
    plan = [decompose(b, e) for b, e in ranges]
    return plan, {node for nodes in plan for node in nodes}


def fold_nodes(plan: list[list[NodeId]], got: Mapping[NodeId, bytes]) -> list[bytes]:
    """The hash of each planned range from the fetched nodes."""
    missing = {n for nodes in plan for n in nodes} - got.keys()
    if missing:
        raise ProofError(f"store lacks {len(missing)} Merkle node(s), e.g. {min(missing)}")
    return [fold_range([got[n] for n in nodes]) for nodes in plan]


def resolve(
    ranges: Iterable[tuple[int, int]], fetch: Callable[[set[NodeId]], Mapping[NodeId, bytes]]
) -> list[bytes]:
    """Turn proof ranges into hashes, reading all the nodes they need in one fetch."""
    plan, wanted = plan_nodes(ranges)
    return fold_nodes(plan, fetch(wanted) if wanted else {})


def _memory_fetch(leaf_hashes: Sequence[bytes]) -> Callable[[set[NodeId]], dict[NodeId, bytes]]:
    def fetch(ids: set[NodeId]) -> dict[NodeId, bytes]:
        out = {}
        for level, index in ids:
            lo = index << level
            out[(level, index)] = root_of(leaf_hashes[lo : lo + (1 << level)])
        return out

    return fetch


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """Reference Merkle tree hash over leaf hashes (O(n); for tests and small trees)."""
    f = Frontier()
    for h in leaf_hashes:
        f.append(h)
    return f.root()


def prove_inclusion(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """Inclusion proof for ``index`` in the first ``size`` leaves held in memory."""
    return resolve(inclusion_ranges(index, size), _memory_fetch(leaf_hashes[:size]))


def prove_consistency(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """Consistency proof between two sizes of the leaves held in memory."""
    return resolve(consistency_ranges(old_size, new_size), _memory_fetch(leaf_hashes[:new_size]))


def _check_hash(h: bytes, what: str) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError(f"{what} is {len(h)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an inclusion proof (RFC 9162 §2.1.3.2); raise :class:`ProofError` if it fails."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}")
    _check_hash(leaf, "leaf hash")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("calculated root does not match the expected root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check a consistency proof (RFC 9162 §2.1.4.2); raise :class:`ProofError` if it fails."""
    if not 0 < old_size <= new_size:
        # As Go's tlog and transparency-dev/merkle: consistency with the empty tree is meaningless.
        raise ProofError(f"old size {old_size} is not within 1..{new_size}")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    if old_size == new_size:
        if proof:
            raise ProofError("proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("equal sizes with different roots")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError("proof does not reproduce the old root")
    if sr != new_root:
        raise ProofError("proof does not reproduce the new root")


class Frontier:
    """The right-most complete subtree roots of a growing tree (a compact range [0, size)).

    Appending is O(log n) amortised O(1) hashes, and returns the complete
    nodes the append created so that a store can keep them for proofs.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes")
        self._size = size
        self._hashes = list(hashes)

    @classmethod
    def ids(cls, size: int) -> list[NodeId]:
        """The nodes a frontier of ``size`` is made of, left to right."""
        return decompose(0, size)

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def copy(self) -> Frontier:
        return Frontier(self._size, self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the new complete nodes (level, index, hash)."""
        i = self._size
        created = [(0, i, leaf)]
        h, level = leaf, 0
        while i & 1:
            h = node_hash(self._hashes.pop(), h)
            level += 1
            i >>= 1
            created.append((level, i, h))
        self._hashes.append(h)
        self._size += 1
        return created

    def append_subtree(self, level: int, h: bytes) -> None:
        """Add the root of a complete subtree of ``2**level`` leaves (size must be aligned)."""
        if self._size & ((1 << level) - 1):
            raise ValueError(f"size {self._size} is not a multiple of 2**{level}")
        i = self._size >> level
        while i & 1:
            h = node_hash(self._hashes.pop(), h)
            i >>= 1
        self._hashes.append(h)
        self._size += 1 << level

    def root(self) -> bytes:
        return fold_range(self._hashes)
