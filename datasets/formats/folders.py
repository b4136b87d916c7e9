"""Classification layouts: torchvision ImageFolder and Hugging Face imagefolder."""

from __future__ import annotations

from hoardfs.datasets.formats.base import (
    Generated,
    StoredFile,
    Tree,
    check_name,
    check_samples,
    class_names,
    finish,
    who,
)
from hoardfs.datasets.layouts import PlacementError
from hoardfs.datasets.model import Sample, canonical

#: the directory names `datasets` (Hugging Face) takes as a split (datasets.data_files.SPLIT_KEYWORDS),
#: and the split it loads them as; a directory of another name is not a split to it
HF_SPLITS = {"train": "train", "training": "train",
             "validation": "validation", "valid": "validation", "dev": "validation", "val": "validation",
             "test": "test", "testing": "test", "eval": "test", "evaluation": "test"}


class ImageFolder:
    """`<split>/<class>/<key><ext>` — torchvision's ImageFolder, one root per split."""

    name = "imagefolder"
    needs_class = True
    needs_size = False
    view_ok = True

    def place(self, sample: Sample) -> str:
        return f"{sample.split}/{sample.cls}/{sample.key}{sample.ext}"

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        ordered = check_samples(self, samples)
        class_names(ordered, doc)
        checked: set[str | None] = set()  # a name is checked once: the first sample holding a bad one is named
        for s in ordered:
            if s.cls not in checked:
                check_name(s.cls or "", f"{who(s)}: class")
                checked.add(s.cls)
        tree = Tree(files=[StoredFile(self.place(s), s.sha256, s.size) for s in ordered])
        return finish(tree, self.name, options.get("prefix", ""))


class HFImageFolder:
    """Hugging Face `imagefolder`: `<split>/<key><ext>` and `<split>/metadata.jsonl`, one line
    per image — `file_name` (relative to that directory), `label` (the class index in the
    pinned map), `class` (its name), `sha256`, `node_id`.

    The traps it avoids: a metadata file must be in its images' directory or a parent, and one
    at the root beside split directories is ignored (datasets#4548, #5650, #7337), so there is
    one per split directory; with metadata `datasets` infers no labels from directories, so the
    class is a column; a directory named like a split (`test`) anywhere in a path makes its
    files that split, so images sit directly in the split directory under hex names; every
    metadata file must have the same columns and types, so no column is ever null; a split
    directory `datasets` does not know (`holdout`) would be dropped silently, so it is refused."""

    name = "hf-imagefolder"
    needs_class = True
    needs_size = False
    view_ok = True

    def place(self, sample: Sample) -> str:
        return f"{sample.split}/{sample.key}{sample.ext}"

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        ordered = check_samples(self, samples)
        class_names(ordered, doc)
        loaded_as: dict[str, str] = {}
        for s in ordered:
            hf = HF_SPLITS.get(s.split)
            if hf is None:
                raise PlacementError(f"layout {self.name}: split {s.split!r} is not a directory name Hugging Face "
                                     f"datasets loads as a split ({', '.join(HF_SPLITS)}): its files would be "
                                     "dropped silently; name the [split] ratios train/validation/test")
            other = loaded_as.setdefault(hf, s.split)
            if other != s.split:
                raise PlacementError(f"layout {self.name}: splits {other!r} and {s.split!r} both load as {hf!r} in "
                                     "Hugging Face datasets; keep one of them in the [split] ratios")
        tree = Tree(files=[StoredFile(self.place(s), s.sha256, s.size) for s in ordered])
        lines: dict[str, list[str]] = {}
        for s in ordered:
            lines.setdefault(s.split, []).append(canonical(
                {"file_name": f"{s.key}{s.ext}", "label": s.class_index, "class": s.cls, "sha256": s.sha256,
                 "node_id": s.node_id}))
        tree.generated = [Generated(f"{split}/metadata.jsonl", ("\n".join(rows) + "\n").encode())
                          for split, rows in lines.items()]
        return finish(tree, self.name, options.get("prefix", ""))
