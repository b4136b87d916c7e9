"""Loading an open_clip model from a weights file the user installed, and encoding images and
text with it — the one code path the `clip-embed` action's worker (image side) and `hoard
search` / the GUI's search box (text side) both go through (docs/search.md).

Nothing here downloads: the model's architecture is an open_clip model name whose config ships
with open_clip (`ViT-B-32`, …) or the path of a model config JSON in open_clip's own format
(`{"embed_dim", "vision_cfg", "text_cfg"}`, added with `open_clip.add_model_config`), and the
weights are a local file (`search.clip_weights`). A config that names a Hugging Face tokenizer
or timm backbone that would fetch files is refused before open_clip is asked
(`HF_HUB_OFFLINE` is set besides). torch and open_clip are imported on first use: a `hoard`
command that does not search never pays their import time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display

#: images encoded per forward pass
BATCH = 16
#: what a search says where torch and open_clip are not installed (`make install` leaves them out)
NOT_INSTALLED = ("text → image search needs torch and open_clip, which this install lacks: install the search "
                 "extra, `make search` in a checkout or `pip install 'hoardfs[search]'` (docs/search.md, Install)")
#: the longest side an image is given to the model, in units of its shortest (`prepare`)
MAX_ASPECT = 4
#: the longest search text (characters); the tokenizer truncates to the model's context anyway
MAX_QUERY = 1000


class ClipError(HoardError):
    """The model cannot be loaded (no weights configured, a missing or unreadable file, a
    config that would download): one line naming the file and the next step."""

    exit_code = ExitCode.USAGE


@dataclass
class Loaded:
    """A model ready to encode: `model_id` is what its embeddings are stored under."""

    model_id: str
    dim: int
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str


_CACHE: dict[tuple[str, str, str], tuple[tuple[int, int, int], Loaded]] = {}
#: one load at a time: the GUI's searches are threads, and open_clip's config registry is global
_LOCK = threading.Lock()


def open_clip_module() -> Any:
    """open_clip, imported (with torch and torchvision) on first use; ClipError (one line) when
    the search extra is missing or does not import — a torchvision beside a torch of another
    build fails at import (`operator torchvision::nms does not exist`): the two are installed as
    one pair (`make search`, docs/search.md)."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    # open_clip asks the hub for nothing (load refuses the configs that would); if it did, it must not —
    # set, not defaulted: a HF_HUB_OFFLINE=0 in the service's environment does not turn downloads on
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import open_clip  # deferred: torch loads only where a model is used, after the offline variables above
    except ImportError:
        raise ClipError(NOT_INSTALLED) from None
    except (OSError, RuntimeError) as e:  # a torchvision or torch that does not load here
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ClipError(f"open_clip does not import here ({first}); install torch and torchvision as one pair: "
                        "`make search` (docs/search.md, Install)") from None
    return open_clip


def readiness(clip_weights: Path | None, *, check_import: bool = True) -> dict[str, Any]:
    """Whether text → image search can run here (`hoard health`'s `search`): `installed` (open_clip
    and usearch are found), `configured` (search.clip_weights names a file), `imports` (open_clip
    imports: checked only where both hold and `check_import` asks, in a process of its own — it
    loads torch, seconds — once per process; None where not checked), `ready` (all three) and
    `note`, one line saying which and the next step."""
    installed = all(importlib.util.find_spec(m) is not None for m in ("open_clip", "usearch"))
    configured = clip_weights is not None and clip_weights.is_file()
    imports: bool | None = None
    if not installed:
        note = "not installed (optional: `make search`, or `pip install 'hoardfs[search]'`; docs/search.md)"
    elif clip_weights is None:
        note = "installed, no weights configured (search.clip_weights; docs/search.md)"
    elif not configured:
        note = f"search.clip_weights {display(str(clip_weights))} is not a file; install the weights there"
    elif not check_import:
        note = "installed and configured (`hoard health` checks that open_clip imports)"
    else:
        imports, said = _imports()
        note = ("ready" if imports else f"open_clip does not import here ({said}); install torch and torchvision as "
                "one pair: `make search` (docs/search.md, Install)")
    return {"installed": installed, "configured": configured, "imports": imports, "ready": bool(imports),
            "note": note}


@functools.cache
def _imports() -> tuple[bool, str]:
    """(open_clip imports in a fresh interpreter, its error's last line)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", "import open_clip"], capture_output=True, text=True,
                              timeout=300, env=env)
    except subprocess.TimeoutExpired:
        return False, "the import took over 300 s"
    lines = done.stderr.strip().splitlines()
    return done.returncode == 0, (lines[-1][:200] if lines else f"exit {done.returncode}")


def weights_digest(path: Path) -> str:
    """The first 16 hex digits of the weights file's sha256: part of the model id."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:16]


def _model_name(model: str) -> str:
    """The open_clip name of `model`: a built-in name, or a config JSON's stem once it is added."""
    if not model.endswith(".json"):
        return model
    open_clip = open_clip_module()
    path = Path(model)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ClipError(f"search.clip_model: {display(model)} is not a readable model config JSON ({e}); give an "
                        "open_clip model name (ViT-B-32) or such a file") from None
    text = cfg.get("text_cfg", {}) if isinstance(cfg, dict) else {}
    vision = cfg.get("vision_cfg", {}) if isinstance(cfg, dict) else {}
    if not isinstance(text, dict) or not isinstance(vision, dict) or "embed_dim" not in cfg:
        raise ClipError(f"search.clip_model: {display(model)} is not an open_clip model config "
                        "(it needs embed_dim, vision_cfg and text_cfg)")
    _refuse_downloads(model, cfg)
    open_clip.add_model_config(path)
    return path.stem


def _refuse_downloads(model: str, cfg: dict[str, Any]) -> None:
    """ClipError when the model config `cfg` names a part open_clip would fetch from the hub: a
    Hugging Face text model or tokenizer (49 of the configs open_clip ships do, every SigLIP
    among them), a pretrained timm backbone."""
    text = cfg.get("text_cfg", {})
    vision = cfg.get("vision_cfg", {})
    if (isinstance(text, dict) and (text.get("hf_model_name") or text.get("hf_tokenizer_name"))) or (
            isinstance(vision, dict) and vision.get("timm_model_pretrained")):
        raise ClipError(f"search.clip_model: {display(model)} names a Hugging Face model, tokenizer or pretrained "
                        "timm backbone, which would be downloaded; nothing is downloaded here — use a config "
                        "whose parts ship with open_clip (ViT-B-32, ViT-B-16, ViT-L-14; docs/search.md)")


def weights_file(weights: Path | str | None) -> Path:
    """The weights file named, checked to be one (ClipError otherwise), before anything is imported."""
    if not weights:
        raise ClipError("search.clip_weights is not set: put the path of an open_clip weights file in hoard.toml "
                        "under [search] (docs/search.md names the weights to install)")
    wpath = Path(weights)
    if not wpath.is_file():
        raise ClipError(f"search.clip_weights: {display(str(wpath))} is not a file; install the weights there "
                        "(docs/search.md) or fix the path in hoard.toml")
    return wpath


def load(model: str, weights: Path | str | None, device: str = "cpu") -> Loaded:
    """The model `model` with the weights file `weights`, on `device` ("cpu" or "cuda"), in
    eval mode; loaded once per process. ClipError (one line) when it cannot be."""
    wpath = weights_file(weights)
    with _LOCK:
        return _load(model, wpath, device)


def _load(model: str, wpath: Path, device: str) -> Loaded:
    key = (model, str(wpath.resolve()), device)
    st = wpath.stat()  # new weights copied over the old file are another model (the GUI runs for weeks)
    sig = (st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _CACHE and _CACHE[key][0] == sig:
        return _CACHE[key][1]
    _CACHE.pop(key, None)  # the old model's memory goes with it
    open_clip = open_clip_module()
    import torch  # deferred: torch loads only where a model is used

    name = _model_name(model)
    if name not in open_clip.list_models():
        raise ClipError(f"search.clip_model: {display(model)} is not an open_clip model name nor a config JSON; "
                        f"e.g. ViT-B-32 (docs/search.md)")
    _refuse_downloads(model, open_clip.get_model_config(name) or {})
    try:  # the absolute path: a relative one may read as a download tag (`openai`), which open_clip tries first
        net, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(wpath.resolve()),
                                                                   device=device)
    except Exception as e:  # a file that is not these weights fails in many ways (pickle, zip, shapes)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ClipError(f"search.clip_weights: {display(str(wpath))} does not load into {name} ({first}); give the "
                        "weights of that model (docs/search.md)") from None
    net.eval()
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        dim = int(net.encode_text(tokenizer(["a"]).to(device)).shape[-1])
    loaded = Loaded(f"{name}@{weights_digest(wpath)}", dim, net, preprocess, tokenizer, device)
    _CACHE[key] = (sig, loaded)
    return loaded


def prepare(m: Loaded, image: Any) -> Any:
    """The model's input tensor of a PIL image (RGB): the model's own transform, given at most
    the middle MAX_ASPECT:1 of an image longer than that. open_clip's transform scales the short
    side to the model's size and then keeps the middle square: a 1 × 2,000,000 image (a few KB
    of PNG) was scaled to 224 × 448,000,000 pixels first. What is cut off lies outside that
    square, so an image of an ordinary shape is transformed as before. MemoryError or ValueError
    when the image cannot be transformed still."""
    w, h = image.size
    if w > MAX_ASPECT * h:
        left = (w - MAX_ASPECT * h) // 2
        image = image.crop((left, 0, left + MAX_ASPECT * h, h))
    elif h > MAX_ASPECT * w:
        top = (h - MAX_ASPECT * w) // 2
        image = image.crop((0, top, w, top + MAX_ASPECT * w))
    return m.preprocess(image)


def encode_images(m: Loaded, images: list[Any]) -> Any:
    """L2-normalised float32 embeddings (numpy, one row per PIL image, RGB)."""
    return encode_prepared(m, [prepare(m, im) for im in images])


def encode_prepared(m: Loaded, tensors: list[Any]) -> Any:
    """L2-normalised float32 embeddings (numpy, one row per tensor `prepare` made)."""
    import torch  # deferred: torch loads only where a model is used

    rows = []
    with torch.no_grad():
        for i in range(0, len(tensors), BATCH):
            x = torch.stack(tensors[i:i + BATCH]).to(m.device)
            rows.append(torch.nn.functional.normalize(m.model.encode_image(x).float(), dim=-1).cpu())
    return torch.cat(rows).numpy() if rows else torch.zeros((0, m.dim)).numpy()


def encode_text(m: Loaded, text: str) -> Any:
    """The L2-normalised float32 embedding (numpy, 1-D) of `text`."""
    import torch  # deferred: torch loads only where a model is used

    with torch.no_grad():
        t = m.tokenizer([text[:MAX_QUERY]]).to(m.device)
        return torch.nn.functional.normalize(m.model.encode_text(t).float(), dim=-1).cpu().numpy()[0]


class NothingEmbedded(HoardError):
    """No image is embedded with the configured model yet: one line with the way on (exit 0
    from `hoard search`: not an error, an empty answer)."""

    exit_code = ExitCode.OK


def search_text(settings: Any, conn: Any, text: str, limit: int, note: Callable[[str], None]) -> tuple[str, list[Any]]:
    """(model id, the `limit` images nearest `text`, nearest first) — `hoard search` and the GUI's
    search box. ClipError when the model cannot be loaded; NothingEmbedded when none of its
    embeddings are stored."""
    from hoardfs.sql import embeddings  # deferred: the index code only a search needs, not the action

    weights_file(settings.search.clip_weights)
    have = embeddings.models(conn)
    if not have:  # nothing to search: no need to load the model
        raise NothingEmbedded("no image is embedded yet: `hoard action run clip-embed` embeds the stored images "
                              "(docs/search.md)")
    m = load(settings.search.clip_model, settings.search.clip_weights, "cpu")
    if not have.get(m.model_id):
        others = "; stored: " + ", ".join(f"{k} ({v} images)" for k, v in have.items()) if have else ""
        raise NothingEmbedded(f"no image is embedded with {m.model_id} yet: `hoard action run clip-embed` embeds the "
                              f"stored images (docs/search.md){others}")
    return m.model_id, embeddings.nearest(conn, settings.ssd.root, m.model_id, encode_text(m, text), limit, note)
