"""`hoard-builtin keyframes IN OUT [--threshold T] [--min-scene S] [--max-scenes N]
[--frames-per-scene K]`: each input video → its scenes → their keyframes, with ffmpeg:

    scenes/<sha256>/scene_0001.mp4              a scene clip, a child of the video
    scenes/<sha256>/scene_0001/frame_0001.png   a keyframe of that clip, a child of the clip

A scene starts where ffmpeg's scene score is above T (and at least S seconds after the last
cut); a video without a cut is one scene. A clip is the scene's video stream re-encoded
(H.264, no audio, no metadata, one thread for decoding and encoding: the same input gives the
same bytes); its frames are its first K keyframes (I-frames), as PNG.

Videos come from anywhere: only the container formats in FORMATS are opened (a playlist or a
concat script named `.mp4` would make ffmpeg read other files), only as local files; a file
ffprobe cannot read, without a video stream or of another format is one line on stderr and
skipped."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

from hoardfs.jobs.actions.builtin import _io

#: the demuxers ffmpeg may use on an input (its -format_whitelist)
FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv,mpeg,ogg,asf"
_SAFE = ["-protocol_whitelist", "file", "-format_whitelist", FORMATS]
_BITEXACT = ["-map_metadata", "-1", "-map_chapters", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact"]
#: the scratch directory inside the output root (removed before the program ends)
SCRATCH = ".keyframes-work"
_PTS = re.compile(r"\bpts_time:\s*([0-9]+(?:\.[0-9]+)?)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, default=0.3, help="ffmpeg's scene score above which a scene starts (0.01–1)")
    p.add_argument("--min-scene", type=float, default=1.0, help="the shortest scene, in seconds")
    p.add_argument("--max-scenes", type=int, default=100, help="at most this many scenes per video (1–500)")
    p.add_argument("--frames-per-scene", type=int, default=1, help="keyframes kept per scene (1–10)")


def programs(args: argparse.Namespace) -> list[Path]:
    """What this program starts once confined (`_io.confine`): ffmpeg and ffprobe, where PATH
    finds them (`run` says which is missing)."""
    return [Path(found) for name in ("ffmpeg", "ffprobe") if (found := shutil.which(name))]


def _ffmpeg(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", *args], capture_output=True, text=True,
                          errors="replace", check=False)


def _last_line(text: str) -> str:
    """ffmpeg's reason, one line: a format refused by the whitelist, else its last line
    (without the `file:<path>: ` it starts with)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = next((ln for ln in lines if "not on whitelist" in ln), lines[-1] if lines else "no message")
    return re.sub(r"^(\[[^]]*\] )?(file:[^:]*: )?", "", line)[:200]


def probe(path: Path) -> float:
    """The video's duration in seconds (ValueError: why it is no video this program reads)."""
    res = subprocess.run(["ffprobe", "-v", "error", *_SAFE, "-show_entries",
                          "format=format_name,duration:stream=codec_type", "-of", "json", f"file:{path}"],
                         capture_output=True, text=True, errors="replace", check=False)
    if res.returncode != 0:
        raise ValueError(f"ffprobe cannot read it: {_last_line(res.stderr)}")
    doc = json.loads(res.stdout or "{}")
    if not any(s.get("codec_type") == "video" for s in doc.get("streams", [])):
        raise ValueError("no video stream")
    try:
        duration = float(doc["format"]["duration"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("no duration (a still image or a broken container)") from None
    if not duration > 0:
        raise ValueError(f"duration {duration} s")
    return duration


def cuts(path: Path, threshold: float) -> list[float]:
    """The times (s) where ffmpeg's scene score passes `threshold`, sorted."""
    res = _ffmpeg(["-v", "info", *_SAFE, "-threads", "1", "-i", f"file:{path}", "-map", "0:v:0", "-an", "-sn", "-dn",
                   "-vf", f"select='gt(scene,{threshold})',showinfo", "-f", "null", "-"])
    if res.returncode != 0:
        raise ValueError(f"ffmpeg cannot decode it: {_last_line(res.stderr)}")
    return sorted({float(m.group(1)) for line in res.stderr.splitlines() if "Parsed_showinfo" in line
                   for m in [_PTS.search(line)] if m})


def scenes(duration: float, found: list[float], min_scene: float, max_scenes: int) -> list[tuple[float, float]]:
    """(start, end) of each scene: cuts closer than `min_scene` to the last one (or the end)
    dropped; at most `max_scenes` (the last one runs to the end)."""
    bounds = [0.0]
    for t in found:
        if t - bounds[-1] >= min_scene and duration - t >= min_scene and len(bounds) < max_scenes:
            bounds.append(t)
    bounds.append(duration)
    return list(zip(bounds, bounds[1:], strict=False))


def clips(path: Path, parts: list[tuple[float, float]], dest_dir: Path) -> list[Path]:
    """The scenes as clips `scene_NNNN.mp4` in `dest_dir`: one decode of the whole video from
    its start (a seek into a damaged stream decodes differently each time), a keyframe forced
    at each cut and the stream split there."""
    times = ",".join(f"{start:.6f}" for start, _ in parts[1:])
    split = ["-force_key_frames", times, "-f", "segment", "-segment_times", times] if times else ["-f", "segment"]
    res = _ffmpeg(["-v", "error", *_SAFE, "-threads", "1", "-i", f"file:{path}",
                   "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2",
                   "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1",
                   *_BITEXACT, *split, "-segment_format", "mp4", "-reset_timestamps", "1", "-segment_start_number", "1",
                   f"file:{dest_dir}/scene_%04d.mp4"])
    made = sorted(dest_dir.glob("scene_*.mp4"))
    if res.returncode != 0 or len(made) != len(parts):
        raise ValueError(f"ffmpeg cannot cut it into {len(parts)} scenes: {_last_line(res.stderr)}")
    return made


def frames(clip_path: Path, count: int, dest_dir: Path) -> list[Path]:
    res = _ffmpeg(["-v", "error", "-protocol_whitelist", "file", "-f", "mp4", "-threads", "1", "-i", f"file:{clip_path}",
                   "-vf", "select='eq(pict_type,I)'", "-fps_mode", "vfr", "-frames:v", str(count), "-threads", "1",
                   *_BITEXACT, "-f", "image2", "-c:v", "png", f"file:{dest_dir}/frame_%04d.png"])
    if res.returncode != 0:
        raise ValueError(f"ffmpeg cannot take the keyframes of {clip_path.name}: {_last_line(res.stderr)}")
    return sorted(dest_dir.glob("frame_*.png"))


def run(input_root: Path, output_root: Path, args: argparse.Namespace) -> int:
    if not 0.01 <= args.threshold <= 1 or not 0 <= args.min_scene <= 3600:
        raise _io.WorkerError("--threshold is 0.01–1 and --min-scene 0–3600 seconds")
    if not 1 <= args.max_scenes <= 500 or not 1 <= args.frames_per_scene <= 10:
        raise _io.WorkerError("--max-scenes is 1–500 and --frames-per-scene 1–10")
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise _io.WorkerError("ffmpeg and ffprobe are not installed: apt-get install ffmpeg")
    work = output_root / SCRATCH
    for inp in _io.inputs(input_root):
        if work.is_symlink():
            work.unlink()
        shutil.rmtree(work, ignore_errors=True)  # a killed run's leftovers too
        work.mkdir()
        try:
            duration = probe(inp.path)
            parts = scenes(duration, cuts(inp.path, args.threshold), args.min_scene, args.max_scenes)
            made: list[tuple[str, list[Path]]] = []
            for clip in clips(inp.path, parts, work):
                name = clip.stem
                (work / name).mkdir()
                made.append((name, frames(clip, args.frames_per_scene, work / name)))
        except ValueError as e:
            _io.warn(inp.rel, str(e))
            continue
        # moved into place only once the whole video is cut: a bad video leaves nothing half-done
        for name, shots in made:
            _io.move_into(output_root, f"scenes/{inp.sha256}/{name}.mp4", work / f"{name}.mp4")
            for j, shot in enumerate(shots, 1):
                _io.move_into(output_root, f"scenes/{inp.sha256}/{name}/frame_{j:04d}.png", shot)
    shutil.rmtree(work, ignore_errors=True)
    return 0
