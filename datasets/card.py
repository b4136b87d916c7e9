"""The files every dataset build writes beside its layout's (docs/datasets.md): `manifest.jsonl`
(one canonical JSON line per sample, sorted by path), `dataset.json` (the spec and its sha256,
the class map, counts per split × class, bytes, the state of the data it was built from) and
`README.md` (a dataset card). Each is a pure function of the samples and the spec: no build
time, no version number — those are in `_JOB.json` and SQL — so a rebuild over the same data is
byte-identical, and `materialize` makes them again from the stored manifest and dataset.json."""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, overload
from urllib.parse import urlsplit

import orjson
import xxhash

from hoardfs.base.paths import display
from hoardfs.datasets.model import Sample
from hoardfs.fsd.core import formats

FORMAT = formats.DATASET
MANIFEST, DOC, README = "manifest.jsonl", "dataset.json", "README.md"
COMMON = (MANIFEST, DOC, README)


#: json.dumps with these options builds an encoder per call; a manifest makes a million calls
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(doc: Any) -> str:
    """Canonical JSON: sorted keys, `,`/`:` separators, UTF-8 as it is (no trailing newline)."""
    return _ENCODER.encode(doc)


def canonical_bytes(doc: Any) -> bytes:
    return (canonical(doc) + "\n").encode()


def manifest_bytes(samples: list[Sample]) -> bytes:
    return "".join(canonical(s.to_json()) + "\n" for s in sorted(samples, key=lambda s: s.path)).encode()


#: a run of digits as long as an integer orjson may read as a float (past 64 bits: it does not
#: refuse one, it rounds it); one inside a string or a float's digits only costs the json module
_LONG = len("18446744073709551616") - 1
#: every digit as "0", every other byte as " ": a run of _LONG zeros is a run of digits
_ZEROS = bytes(48 if chr(b).isdigit() and b < 128 else 32 for b in range(256))


_BLANK = frozenset(b" \t\r\n\x0b\x0c")


def _line_starts(data: bytes) -> array[int]:
    """Where each of the manifest's lines starts (blank ones left out)."""
    starts = array("Q")
    at, end = 0, len(data)
    find = data.find
    while at < end:
        nl = find(b"\n", at)
        if nl < 0:
            nl = end
        if data[at] not in _BLANK or data[at:nl].strip():  # (a line starts "{": its first byte says)
            starts.append(at)
        at = nl + 1
    return starts


#: the manifest searched for long integers this many bytes at a time (`_long_lines`)
_CHUNK = 1 << 20


def _long_lines(data: bytes, starts: Sequence[int]) -> set[int]:
    """The numbers of the lines (`starts`) holding digits enough for an integer past 64 bits:
    the manifest searched at C speed (a regular expression over a loader's 100,000 lines
    costs its start more than parsing them; a sha256's hex holds such a run once in ~200
    lines), a chunk translated at a time (no copy of the whole manifest)."""
    long: set[int] = set()
    run = b"0" * _LONG
    for base in range(0, len(data), _CHUNK):
        zeros = data[base:base + _CHUNK + _LONG - 1].translate(_ZEROS)
        hit = zeros.find(run)
        while hit >= 0:
            k = bisect.bisect_right(starts, base + hit) - 1
            long.add(k)
            nxt = starts[k + 1] if k + 1 < len(starts) else len(data)
            hit = zeros.find(run, nxt - base) if nxt - base < len(zeros) else -1
    return long


def _line(data: bytes, at: int) -> bytes:
    end = data.find(b"\n", at)
    return data[at:end] if end >= 0 else data[at:]


def manifest_lines(data: bytes) -> tuple[list[bytes], set[int]]:
    """The manifest's lines (blank ones left out), and the numbers of those holding digits
    enough for an integer past 64 bits (`_long_lines`)."""
    starts = _line_starts(data)
    return [_line(data, at) for at in starts], _long_lines(data, starts)


def parse_line(line: bytes, long: bool) -> dict:
    """A manifest line's document. Parsed by orjson (a loader's start waits for it); a line
    orjson refuses (NaN) or may round (`long`: `manifest_lines` found digits enough for an
    integer past 64 bits in it — orjson does not refuse one, it rounds it) by the json module,
    which reads every number as written."""
    if long:
        return json.loads(line)
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def read_manifest(data: bytes) -> list[Sample]:
    """The manifest's samples (a line each)."""
    lines, long = manifest_lines(data)
    return [Sample.from_json(parse_line(line, k in long)) for k, line in enumerate(lines)]


_SHA_AT, _SPLIT_AT = b'"sha256":"', b'"split":"'


def _sha_and_split(line: bytes) -> tuple[bytes, str] | None:
    """A manifest line's sha256 and split, found without parsing it (a loader's start waits on
    100,000 lines): its keys are sorted (`canonical`), so the sample's own `sha256` and
    `split` are the last of their names followed by a string (a converted file's sha256 comes
    earlier, under `converted`; no later key holds an object). None where that does not
    hold plainly (an escape in the split's name): the line is parsed then."""
    a, b = line.rfind(_SHA_AT), line.rfind(_SPLIT_AT)
    if a < 0 or b < a:
        return None
    a += len(_SHA_AT)
    b += len(_SPLIT_AT)
    end = line.find(b'"', b)
    if line[a + 64:a + 65] != b'"' or end < 0 or b"\\" in line[b:end]:
        return None
    try:
        return bytes.fromhex(line[a:a + 64].decode("ascii")), line[b:end].decode()
    except ValueError:  # (not hex, not UTF-8: the parser says what is wrong)
        return None


class Lines(Protocol):
    """Where a manifest's lines are read back from when it is not kept (`Samples.of_pieces`):
    `read(at, n, digest)` gives the n bytes at `at`, their xxh3-64 `digest` checked."""

    def read(self, at: int, n: int, digest: int) -> bytes: ...

    def close(self) -> None: ...


#: the most splits a Samples tells apart (a split's number is kept in 16 bits a sample)
_SPLITS = 1 << 16


class _Scan:
    """What a Samples keeps of each line, gathered a block of whole lines at a time."""

    def __init__(self, digests: bool) -> None:
        self.starts, self.lens = array("Q"), array("L")
        self.xxh: array[int] | None = array("Q") if digests else None
        self.shas = bytearray()
        self.split_of = array("H")
        self.names: dict[str, int] = {}
        self.built: dict[int, Sample] = {}

    def block(self, data: bytes, base: int) -> None:
        """The whole lines `data` (the manifest's bytes from `base`)."""
        starts = _line_starts(data)
        long = _long_lines(data, starts)
        first = len(self.starts)
        for k, at in enumerate(starts):
            line = _line(data, at)
            got = None if k in long else _sha_and_split(line)
            if got is None:
                doc = parse_line(line, k in long)
                got = bytes.fromhex(doc["sha256"]), doc["split"]
                if k in long:  # (built now: its line is parsed by the json module, `card.parse_line`)
                    self.built[first + k] = Sample.from_json(doc)
            # a sha256 of 32 bytes, a split's name of at most _SPLITS: what `shas` and `split_of` keep
            # (a line that is not a sample's is refused, not let shift every later sample's sha256)
            if len(got[0]) != 32 or not isinstance(got[1], str):
                raise ValueError(f"manifest line {first + k + 1}: its sha256 or split is not one")
            split = self.names.setdefault(got[1], len(self.names))
            if split >= _SPLITS:
                raise ValueError(f"manifest line {first + k + 1}: more than {_SPLITS} splits")
            self.starts.append(base + at)
            self.lens.append(len(line))
            if self.xxh is not None:
                self.xxh.append(xxhash.xxh3_64_intdigest(line))
            self.shas += got[0]
            self.split_of.append(split)

    def samples(self, data: bytes = b"", lines: Lines | None = None) -> Samples:
        return Samples(self.starts, self.lens, bytes(self.shas), self.split_of, list(self.names), self.built,
                       data=data, lines=lines, xxh=self.xxh)


#: a loader index's first line, then its head (one JSON line), then its arrays (`_INDEX_ARRAYS`,
#: little-endian, a value a sample each) and the sha256s (32 bytes a sample)
_INDEX_MAGIC = b"hoardfs loader index 1\n"
#: each line's start and length, its xxh3-64, its split's number
_INDEX_ARRAYS = ("Q", "Q", "Q", "H")


def _little_endian(a: array[int]) -> array[int]:
    """`a` with its items in little-endian order (the loader index's), in place: swapped on a
    big-endian machine, as it is on any other (swapping is its own inverse: written or read)."""
    if sys.byteorder != "little":
        a.byteswap()
    return a


def loader_index(manifest: bytes, manifest_sha: str) -> bytes:
    """What a training loader's start needs of a manifest, scanned once at the build: each
    line's start, length and xxh3-64, its sample's sha256 and split — 58 bytes a sample, the
    lines themselves read back as the samples are handed out (`Samples.of_index`; a loader
    without it scans the whole manifest, `Samples.of_pieces`: on 100,000 samples, 46 MB read
    and parsed before any disk reads a sample)."""
    scan = _Scan(digests=True)
    scan.block(manifest, 0)
    assert scan.xxh is not None
    head = {"manifest": manifest_sha, "manifest_bytes": len(manifest), "samples": len(scan.starts),
            "splits": list(scan.names), "long": sorted(scan.built)}
    parts = [_INDEX_MAGIC, canonical_bytes(head)]
    for a, code in zip((scan.starts, scan.lens, scan.xxh, scan.split_of), _INDEX_ARRAYS, strict=True):
        parts.append(_little_endian(array(code, a)).tobytes())
    parts.append(bytes(scan.shas))
    return b"".join(parts)


class Samples(Sequence[Sample]):
    """A version's samples, each built from its manifest line whenever it is asked for, none
    kept: a loader's start needs only their sha256s and splits (`_sha_and_split`), and
    building 100,000 samples first keeps every disk waiting — built as they are handed out,
    the work is spread over the epoch while the disks read. Kept a sample: where its line
    starts and its length, its sha256 (all in one bytes) and its split's number — no object a
    sample; and either the manifest as read (`of_manifest`), or nothing of it: each line read
    back as it is asked for, its xxh3-64 kept and checked (`of_pieces`, 62 bytes a sample,
    whatever the manifest's size)."""

    def __init__(self, starts: array[int], lens: array[int], shas: bytes, split_of: array[int], names: list[str],
                 built: dict[int, Sample] | None = None, *, data: bytes = b"", lines: Lines | None = None,
                 xxh: array[int] | None = None, long: frozenset[int] = frozenset()) -> None:
        self._starts, self._lens = starts, lens  # sample i's line: its start in the manifest, its length
        self._sha = shas  # sample i's sha256: _sha[32 i : 32 i + 32]
        self._split_of, self._names = split_of, names  # sample i's split: names[split_of[i]]
        self._built = built or {}  # samples built at once (a line the json module reads, `parse_line`)
        self._long = long  # samples whose line the json module reads when it is asked for (`of_index`)
        self._data, self._lines, self._xxh = data, lines, xxh  # the manifest kept, or where its lines are read

    @classmethod
    def of_manifest(cls, data: bytes) -> Samples:
        """The samples of a manifest read whole, kept."""
        scan = _Scan(digests=False)
        scan.block(data, 0)
        return scan.samples(data=data)

    @classmethod
    def of_pieces(cls, pieces: Iterable[bytes], lines: Lines,
                  found: Callable[[int, bytes], None] | None = None) -> Samples:
        """The samples of a manifest read in verified pieces (of any size), none of it kept:
        `lines` reads each sample's line back when it is asked for. `found(first, shas)`: told
        the sha256s of each piece's whole lines as they are found (samples `first`… on, 32
        bytes each) — before the manifest is checked whole: a reader may look them up early."""
        scan = _Scan(digests=True)
        carry, base = b"", 0

        def block(data: bytes, at: int) -> None:
            first, had = len(scan.starts), len(scan.shas)
            scan.block(data, at)
            if found is not None and len(scan.shas) > had:
                found(first, bytes(scan.shas[had:]))

        for piece in pieces:
            buf = carry + piece if carry else bytes(piece)
            cut = buf.rfind(b"\n") + 1
            if cut:
                block(buf[:cut], base)
                base += cut
            carry = buf[cut:]
        if carry:
            block(carry, base)
        return scan.samples(lines=lines)

    @classmethod
    def of_index(cls, data: bytes, manifest_sha: str, manifest_bytes: int, lines: Lines) -> Samples:
        """The samples of a manifest from its loader index (`loader_index`), none of the manifest
        read: `lines` reads each line back when it is asked for, its xxh3-64 checked, its sha256
        and split checked against the index's. ValueError for bytes that are no loader index or
        one of another manifest (the caller scans the manifest then)."""
        if not data.startswith(_INDEX_MAGIC):
            raise ValueError("not a loader index")
        nl = data.find(b"\n", len(_INDEX_MAGIC))
        try:
            head = json.loads(data[len(_INDEX_MAGIC):nl]) if nl > 0 else None
        except RecursionError:  # (nested past the parser's depth: no head of ours)
            head = None
        if not isinstance(head, dict) or head.get("manifest") != manifest_sha or \
                head.get("manifest_bytes") != manifest_bytes:
            raise ValueError(f"the loader index is not manifest {manifest_sha[:12]}…'s")
        n, names, long = head.get("samples"), head.get("splits"), head.get("long")
        if not isinstance(n, int) or n < 0 or not isinstance(names, list) or not isinstance(long, list) or \
                not all(isinstance(x, str) for x in names) or not all(isinstance(k, int) for k in long):
            raise ValueError("the loader index's head is damaged")
        at = nl + 1
        got = []
        for code in _INDEX_ARRAYS:
            a = array(code)
            end = at + a.itemsize * n
            a.frombytes(data[at:end])
            got.append(_little_endian(a))
            at = end
        starts, lens, xxh, split_of = got
        shas = data[at:at + 32 * n]
        if at + 32 * n != len(data) or len(split_of) != n:
            raise ValueError("the loader index is cut short or overlong")
        if n and (max(split_of) >= len(names) or any(a + b > manifest_bytes for a, b in zip(starts, lens, strict=True))):
            raise ValueError("the loader index names a split or a line it does not hold")
        return cls(starts, lens, shas, split_of, names, lines=lines, xxh=xxh, long=frozenset(long))

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Samples:
        names: dict[str, int] = {}
        split_of = array("H", (names.setdefault(s.split, len(names)) for s in samples))
        return cls(array("Q", bytes(8 * len(samples))), array("L", bytes(array("L").itemsize * len(samples))),
                   b"".join(bytes.fromhex(s.sha256) for s in samples), split_of, list(names), dict(enumerate(samples)))

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | Sequence[Sample]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        built = self._built.get(i)
        return built if built is not None else Sample.from_json(self._doc(i, i in self._long))

    def _doc(self, i: int, long: bool = False) -> dict[str, Any]:
        """Sample i's line parsed (`long`: by the json module, `parse_line`): ValueError where its
        sha256 or split is not the one found at the start (`_sha_and_split` reads a canonical
        line; one written otherwise, a key after `split` holding an object with its own `split`,
        may differ) — the sample is never handed out with fields other than those it was
        planned by."""
        at, n = self._starts[i], self._lens[i]  # (its line read here, not by a call: one a sample handed out)
        line = self._data[at:at + n] if self._lines is None else self._lines.read(at, n, self._xxh[i])  # type: ignore[index]
        d = parse_line(line, long)
        if not isinstance(d, dict) or not isinstance(d.get("sha256"), str) or \
                bytes.fromhex(d["sha256"]) != self._sha[32 * i:32 * i + 32] or \
                d.get("split") != self._names[self._split_of[i]]:
            raise ValueError(f"the manifest line at byte {self._starts[i]}: its sha256 or split is not the one found "
                             "in it at the start (not a canonical manifest line)")
        return d

    def fields(self, i: int) -> dict[str, Any]:
        """Sample i's fields a loader yields, from its line (no Sample built, none kept: an
        epoch's memory does not grow with the samples handed out)."""
        it = self._built.get(i) if self._built else None
        if it is None and self._long and i in self._long:  # (built as the scan builds it: the same fields)
            it = Sample.from_json(self._doc(i, True))
        if it is None:
            d = self._doc(i)
            get = d.get
            return {"key": d["key"], "sha256": d["sha256"], "labels": get("labels", {}), "split": d["split"],
                    "class": get("class"), "class_index": get("class_index"), "path": d["path"],
                    "node_id": d["node_id"]}
        return {"key": it.key, "sha256": it.sha256, "labels": {a: list(b) for a, b in it.labels.items()},
                "split": it.split, "class": it.cls, "class_index": it.class_index, "path": it.path,
                "node_id": it.node_id}

    def splits(self) -> list[str]:
        """Each sample's split."""
        names = self._names
        return [names[k] for k in self._split_of]

    def split_names(self) -> list[str]:
        """The names of the splits the samples are in."""
        present = set(self._split_of)
        return [n for k, n in enumerate(self._names) if k in present]

    def indices_of(self, split: str) -> list[int]:
        """The numbers of the samples of one split, in order (`of_split`'s samples)."""
        code = self._names.index(split) if split in self._names else -1
        return [k for k, c in enumerate(self._split_of) if c == code]

    def of_split(self, split: str) -> Samples:
        """The samples of one split (what is kept of them, shared: the manifest or its lines)."""
        keep = self.indices_of(split)
        sha, xxh = self._sha, self._xxh
        return Samples(array("Q", (self._starts[k] for k in keep)), array("L", (self._lens[k] for k in keep)),
                       b"".join(sha[32 * k:32 * k + 32] for k in keep), array("H", bytes(2 * len(keep))), [split],
                       {n: self._built[k] for n, k in enumerate(keep) if k in self._built}, data=self._data,
                       lines=self._lines, xxh=array("Q", (xxh[k] for k in keep)) if xxh is not None else None,
                       long=frozenset(n for n, k in enumerate(keep) if k in self._long) if self._long else frozenset())

    def close(self) -> None:
        """Let go of what reading the lines back holds open (read again, it is opened anew)."""
        if self._lines is not None:
            self._lines.close()

    def shas(self) -> list[bytes]:
        """Each sample's sha256 (a new list: its items made from the one bytes kept)."""
        b = self._sha
        return [b[k:k + 32] for k in range(0, len(b), 32)]

    @property
    def sha256s(self) -> Shas:
        """Each sample's sha256, read out of the one bytes kept as it is asked for (a list of
        them is ~70 bytes a sample more)."""
        return Shas(self._sha)


class Shas(Sequence[bytes]):
    """The sha256s of 32 bytes each laid end to end in one bytes, as a sequence."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob  # (sha256 i: blob[32 i : 32 i + 32] — sliced by a loop that asks 100,000)

    def __len__(self) -> int:
        return len(self.blob) // 32

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step == 1:
                return Shas(self.blob[32 * a:32 * max(a, b)])
            return [self[k] for k in range(a, b, step)]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.blob[32 * i:32 * i + 32]

    def __iter__(self) -> Iterator[bytes]:
        b = self.blob
        return (b[k:k + 32] for k in range(0, len(b), 32))

    def __eq__(self, other: object) -> bool:
        """Equal to the list of the same sha256s in the same order (`Samples.shas()`, what a
        loader's `shas` is a view of) and to Shas of the same bytes."""
        if isinstance(other, Shas):
            return self.blob == other.blob
        if isinstance(other, list):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.blob)


def fingerprint(manifest: bytes, spec_sha256: str) -> str:
    """The state of the data a build saw: its manifest's lines and its spec."""
    return hashlib.sha256(manifest + b"\0" + spec_sha256.encode()).hexdigest()


def split_shares(counts: dict[str, dict[str, int]], ratios: dict[str, float]) -> dict[str, dict[str, Any]]:
    """split → {samples, share, ratio}: the realised split of `counts` (split → class → n)."""
    total = sum(sum(by.values()) for by in counts.values())
    out = {}
    for sp in [*ratios, *(k for k in counts if k not in ratios)]:
        n = sum(counts.get(sp, {}).values())
        out[sp] = {"samples": n, "share": round(n / total, 4) if total else 0.0, "ratio": ratios.get(sp, 0.0)}
    return out


def large_groups(samples: list[Sample], max_share: float) -> list[dict[str, Any]]:
    """The groups (each sample's `group`) holding more than `max_share` of the samples, largest first."""
    sizes = Counter(s.group for s in samples if s.group is not None)
    total = len(samples)
    return [{"group": g, "samples": n, "share": round(n / total, 4)}
            for g, n in sorted(sizes.items(), key=lambda gn: (-gn[1], gn[0])) if total and n / total > max_share]


def dataset_doc(spec_doc: dict[str, Any], spec_sha256: str, class_map: list[str], counts: dict[str, dict[str, int]],
                samples: list[Sample], manifest: bytes, licences: list[str],
                leak_audit: dict[str, Any] | None = None) -> dict[str, Any]:
    """dataset.json; `leak_audit`: the build's (hoardfs.datasets.audit.run), kept as it is."""
    ratios = spec_doc["split"]["ratios"]
    ratios = {k: ratios[k] for k in spec_doc["split"].get("order") or ratios}
    missing = {"source_url": sum(1 for s in samples if not s.source_url), "date": sum(1 for s in samples if not s.date),
               "author": sum(1 for s in samples if not s.author), "licence": sum(1 for s in samples if not s.licences)}
    audit = {} if leak_audit is None else {"leak_audit": leak_audit}
    return {**audit, "format": FORMAT, "name": spec_doc["name"], "layout": spec_doc["layout"], "spec": spec_doc,
            "spec_sha256": spec_sha256, "class_map": class_map, "counts": counts, "samples": len(samples),
            "bytes": sum(s.size for s in samples), "licences": licences,
            "splits": split_shares(counts, ratios),
            "large_groups": large_groups(samples, float(spec_doc["split"].get("max_group_share", 1.0))),
            "without": missing,
            "state": {"fingerprint": fingerprint(manifest, spec_sha256),
                      "manifest_sha256": hashlib.sha256(manifest).hexdigest()}}


def _leak_audit(a: dict[str, Any] | None) -> list[str]:
    """The card's "Leak audit" section: the cross-split pairs of each kind (docs/datasets.md)."""
    if a is None:
        return []
    near = (f"{a['near_dup_pairs']} (perceptual hashes within {a['near_dup_threshold']} bits, the spec's "
            "near_dup_threshold)"
            if a.get("near_dup_pairs") is not None else "not checked (no sample has perceptual hashes: `hoard action "
            "run near-dup-hash`)")
    if a.get("cosine_pairs") is None:
        cos = "not checked (no sample has an image embedding: `hoard action run clip-embed`)"
    else:
        cos = (f"{a['cosine_pairs']} (cosine similarity {a['cosine_threshold']:g} or more, model "
               f"{code(a['cosine_model'])}, {a['cosine_compared']} embedded samples compared"
               + ("" if a.get("cosine_exact", True) else ", by nearest neighbours: a lower bound") + ")")
    lines = ["", "## Leak audit", "",
             "Pairs of samples in two different splits that a model could learn one from the other "
             "(all zero for a dataset whose splits are apart):", "",
             f"- sharing a lineage (an image and its crops, thumbnails, frames): {a['lineage_pairs']}",
             f"- near-duplicates: {near}", f"- near in embedding: {cos}"]
    if a.get("examples"):
        lines += ["", "For example:"]
        lines += [f"- {code(e['a'][:16])} ({code(e['a_split'])}) and {code(e['b'][:16])} ({code(e['b_split'])}): "
                  f"{e['kind'].replace('_', '-')}" for e in a["examples"]]
    return lines


#: a licence shown as an SPDX id (`CC-BY-4.0`, `MIT`): letters, digits, `.`, `+`, `-`; any other
#: licence text is quoted
SPDX_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9.+-]{0,63}")
#: the characters of a value the card shows at most (a scraped licence may be a page of terms)
VALUE_CHARS = 200
_SPACE = re.compile(r"\s+")  # (Unicode's: U+0085, U+2028 and U+2029 end a line too)
_TICKS = re.compile(r"`+")


def code(value: Any, limit: int = VALUE_CHARS, cell: bool = False) -> str:
    """A value from the data (a class name, a host, a licence) as one Markdown code span, which
    no renderer reads as markup: a heading, a link, HTML and `javascript:` in it are text.
    Whitespace runs (newlines too) are one space, control characters and bidirectional
    overrides are shown as escapes (hoardfs.base.paths.display), the value is cut at `limit`
    characters; the fence is one backtick longer than the longest run inside, with a space
    inside it where the value begins or ends with a backtick (CommonMark's rule). `cell`: in a
    table row, where GFM splits at every `|`, even one inside a code span, unless escaped."""
    text = _SPACE.sub(" ", str(value)).strip()
    text = display(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    fence = "`" * (max(map(len, _TICKS.findall(text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" or not text else ""
    span = f"{fence}{pad}{text}{pad}{fence}"
    return span.replace("|", "\\|") if cell else span


def licence(value: Any) -> str:
    """A licence the metadata names, as a card's list item: an SPDX-shaped id as it is, any
    other text quoted (a scraped page of terms may hold headings, HTML and links)."""
    text = str(value).strip()
    return f"- {code(text)}" if SPDX_SHAPE.fullmatch(text) else f"- quoted from the metadata: {code(text)}"


def readme(doc: dict[str, Any], samples: list[Sample]) -> bytes:
    """The dataset card: what it is, where its samples came from, how many of each class in each
    split, the dates they were fetched, the licences their metadata names. Every value from the
    data or the spec is a one-line code span (`code`): a class name or a scraped licence cannot
    add a section, a link or HTML to the card."""
    splits = list(doc["counts"])
    classes = sorted({c for by in doc["counts"].values() for c in by},
                     key=lambda c: (doc["class_map"].index(c) if c in doc["class_map"] else len(doc["class_map"]), c))
    urls = Counter(s.source_url for s in samples if s.source_url)  # the samples of a post share its URL
    hosts: Counter[str] = Counter()
    for url, n in urls.items():
        hosts[urlsplit(url).netloc or url] += n
    dated = [s.date for s in samples if s.date]
    first, last = (min(dated), max(dated)) if dated else (None, None)
    by_class: Counter[str] = Counter()  # the counts per split, summed (the samples counted once: in dataset.json)
    for by in doc["counts"].values():
        by_class.update(by)
    lines = [f"# {doc['name']}", "",
             f"A dataset of {doc['samples']} samples ({doc['bytes']} bytes) in layout {code(doc['layout'])}, built by "
             "hoardfs (`hoard dataset build`). `manifest.jsonl` lists every sample (path, sha256, node, lineage to "
             "its root, source URL, labels, split); `dataset.json` holds the spec and the class map.", "",
             "## Counts", "", "| class | " + " | ".join(code(sp, cell=True) for sp in splits) + " | total |",
             "|---|" + "---|" * (len(splits) + 1)]
    for c in classes:
        row = [doc["counts"][sp].get(c, 0) for sp in splits]
        lines.append(f"| {code(c, cell=True)} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [sum(doc["counts"][sp].values()) for sp in splits]
    lines += ["| total | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |", "", "## Classes", ""]
    lines += [f"{i}. {code(c)} ({by_class.get(c, 0)} samples)" for i, c in enumerate(doc["class_map"])] or \
        ["(no classes)"]
    n = len(samples)
    without = Counter({"source URL": sum(1 for s in samples if not s.source_url),
                       "download date": sum(1 for s in samples if not s.date),
                       "author": sum(1 for s in samples if not s.author),
                       "licence": sum(1 for s in samples if not s.licences)})
    authors = Counter(s.author for s in samples if s.author)
    lines += ["", "## Sources", "",
              "Each sample's source URL, download date, author and licence are those of the nearest item that "
              "holds them: the sample itself, its post (video, message), then theirs.", ""]
    lines += [f"- {code(h)}: {n} samples" for h, n in sorted(hosts.items(), key=lambda hn: (-hn[1], hn[0]))] or \
        ["- no source URL recorded"]
    lines += ["", "Samples without a value (of " + str(n) + "): " + ", ".join(f"{what} {k}" for what, k in without.items())
              + ".",
              "", "## Authors", ""]
    top = sorted(authors.items(), key=lambda an: (-an[1], an[0]))
    lines += [f"- {code(a)}: {k} samples" for a, k in top[:10]] or ["- no author recorded"]
    if len(top) > 10:
        lines.append(f"- and {len(top) - 10} more authors ({sum(k for _, k in top[10:])} samples)")
    lines += ["", "## Dates", "",
              f"Downloaded from {code(first)} to {code(last)}." if dated else "No download date recorded.",
              "", "## Licences", ""]
    lines += [licence(lic) for lic in doc.get("licences", [])] or \
        ["None found in the metadata: check each source's terms."]
    split = doc["spec"]["split"]
    lines += ["", "## Splits", "",
              f"Groups {code(split['group'])} placed by hash of (salt {code(repr(split['salt']))}, group key), the "
              "cuts between splits moved where needed to honour the ratios (docs/datasets.md \"Splits\"): all "
              "samples of one group lie in one split, and added data moves few samples.", "",
              "| split | samples | share | ratio |", "|---|---|---|---|"]
    for sp, got in (doc.get("splits") or {}).items():
        lines.append(f"| {code(sp, cell=True)} | {got['samples']} | {got['share']:.2%} | {got['ratio']:.2%} |")
    big = doc.get("large_groups") or []
    if big:
        lines += ["", f"Groups over {float(split.get('max_group_share', 1.0)):.0%} of the samples:"]
        lines += [f"- {code(g['group'])}: {g['samples']} samples ({g['share']:.1%})" for g in big]
    lines += _leak_audit(doc.get("leak_audit"))
    lines += ["", f"Spec sha256: `{doc['spec_sha256']}`; data fingerprint: `{doc['state']['fingerprint']}`.", ""]
    return "\n".join(lines).encode()
