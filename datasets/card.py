"""The files every dataset build writes beside its layout's (docs/datasets.md): `manifest.jsonl`
(one canonical JSON line per sample, sorted by path), `dataset.json` (the spec and its sha256,
the class map, counts per split × class, bytes, the state of the data it was built from) and
`README.md` (a dataset card). Each is a pure function of the samples and the spec: no build
time, no version number — those are in `_JOB.json` and SQL — so a rebuild over the same data is
byte-identical, and `materialize` makes them again from the stored manifest and dataset.json."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from datasets.model import Sample
from fsd.core import formats

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


def read_manifest(data: bytes) -> list[Sample]:
    return [Sample.from_json(json.loads(line)) for line in data.decode().splitlines() if line]


def fingerprint(manifest: bytes, spec_sha256: str) -> str:
    """The state of the data a build saw: its manifest's lines and its spec."""
    return hashlib.sha256(manifest + b"\0" + spec_sha256.encode()).hexdigest()


def dataset_doc(spec_doc: dict[str, Any], spec_sha256: str, class_map: list[str], counts: dict[str, dict[str, int]],
                samples: list[Sample], manifest: bytes, licences: list[str]) -> dict[str, Any]:
    return {"format": FORMAT, "name": spec_doc["name"], "layout": spec_doc["layout"], "spec": spec_doc,
            "spec_sha256": spec_sha256, "class_map": class_map, "counts": counts, "samples": len(samples),
            "bytes": sum(s.size for s in samples), "licences": licences,
            "state": {"fingerprint": fingerprint(manifest, spec_sha256),
                      "manifest_sha256": hashlib.sha256(manifest).hexdigest()}}


def readme(doc: dict[str, Any], samples: list[Sample]) -> bytes:
    """The dataset card: what it is, where its samples came from, how many of each class in each
    split, the dates they were fetched, the licences their metadata names."""
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
             f"A dataset of {doc['samples']} samples ({doc['bytes']} bytes) in layout `{doc['layout']}`, built by "
             "hoardfs (`hoard dataset build`). `manifest.jsonl` lists every sample (path, sha256, node, lineage to "
             "its root, source URL, labels, split); `dataset.json` holds the spec and the class map.", "",
             "## Counts", "", "| class | " + " | ".join(splits) + " | total |",
             "|---|" + "---|" * (len(splits) + 1)]
    for c in classes:
        row = [doc["counts"][sp].get(c, 0) for sp in splits]
        lines.append(f"| {c} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [sum(doc["counts"][sp].values()) for sp in splits]
    lines += ["| total | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |", "", "## Classes", ""]
    lines += [f"{i}. {c} ({by_class.get(c, 0)} samples)" for i, c in enumerate(doc["class_map"])] or ["(no classes)"]
    lines += ["", "## Sources", ""]
    lines += [f"- {h}: {n} samples" for h, n in sorted(hosts.items(), key=lambda hn: (-hn[1], hn[0]))] or \
        ["- no source URL recorded"]
    lines += ["", "## Dates", "", f"Downloaded from {first} to {last}." if dated else "No download date recorded.",
              "", "## Licences", ""]
    lines += [f"- {lic}" for lic in doc.get("licences", [])] or ["None found in the metadata: check each source's terms."]
    lines += ["", "## Splits", "",
              f"By hash of (salt {doc['spec']['split']['salt']!r}, group key `{doc['spec']['split']['group']}`): all "
              "samples of one group lie in one split, and adding data never moves a sample.",
              "", f"Spec sha256: `{doc['spec_sha256']}`; data fingerprint: `{doc['state']['fingerprint']}`.", ""]
    return "\n".join(lines).encode()
