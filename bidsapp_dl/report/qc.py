"""Participant-level QC: a small PNG mosaic per stored tensor, and ``qc.html`` listing them all.

A mosaic shows three orthogonal slices through the middle of the tensor (sagittal, coronal,
axial; superior up, RAS+ axes for minimal preprocessing), so that orientation, cropping and
intensity can be checked at a glance for every subject. Mosaics live under ``OUTPUT_DIR/qc/``
with the tensor's relative path (``.bidsignore`` keeps them out of validation). They are
written with numpy and zlib alone: a few milliseconds per image, no plotting library.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import zlib
from html import escape
from pathlib import Path

import numpy as np

from ..maps.io import atomic_path, folder_lock, write_text

log = logging.getLogger(__name__)

QC_DIR = "qc"
PAGE = "qc.html"
PANEL = 80          # longest side of a panel, in pixels (before the page scales it up)
FIXED_WINDOW = {"robust-minmax": (0.0, 1.0), "minmax": (0.0, 1.0), "zscore": (-2.0, 3.0)}


def mosaic_path(output_dir: Path, tensor: Path) -> Path:
    """``OUTPUT_DIR/qc/<tensor's relative folder>/<tensor stem>.png``."""
    relative = Path(tensor).relative_to(output_dir)
    return Path(output_dir) / QC_DIR / relative.with_suffix(".png")


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of ``image`` (rows top to bottom)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape
    raw = np.hstack([np.zeros((height, 1), np.uint8), image]).tobytes()  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def _shrink(panel: np.ndarray) -> np.ndarray:
    """Block-average ``panel`` so that its longest side is at most PANEL pixels."""
    factor = max(1, math.ceil(max(panel.shape) / PANEL))
    if factor == 1:
        return panel
    h, w = (panel.shape[0] // factor) * factor, (panel.shape[1] // factor) * factor
    return panel[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def mosaic(volume: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Sagittal, coronal and axial middle slices side by side, as uint8 (superior up)."""
    x, y, z = (s // 2 for s in volume.shape[:3])
    planes = [np.asarray(p, dtype=np.float32) for p in
              (volume[x, :, :], volume[:, y, :], volume[:, :, z])]
    panels = [_shrink(np.nan_to_num(p).T[::-1]) for p in planes]
    if window is None:
        values = np.concatenate([p.ravel() for p in panels])
        low, high = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    else:
        low, high = window
    scale = 255.0 / (high - low) if high > low else 0.0
    height = max(p.shape[0] for p in panels)
    gap = np.zeros((height, 2), np.uint8)
    row = []
    for p in panels:
        grey = np.clip((p - low) * scale, 0, 255).astype(np.uint8)
        pad = np.zeros((height - grey.shape[0], grey.shape[1]), np.uint8)
        row += [np.vstack([pad, grey]), gap]
    return np.hstack(row[:-1])


def write_mosaic(output_dir: Path, tensor: Path, array: np.ndarray | None = None) -> Path | None:
    """The mosaic of ``tensor``, written unless one newer than the tensor exists; None on failure.

    ``array``: the tensor's voxels when they are at hand (read from the file otherwise).

    QC never fails an extraction: a problem here is logged and the run goes on.
    """
    try:
        out = mosaic_path(output_dir, tensor)
        if out.is_file() and out.stat().st_mtime_ns >= Path(tensor).stat().st_mtime_ns:
            return out
        meta = json.loads(Path(tensor).with_suffix(".json").read_text(encoding="utf-8"))
        window = FIXED_WINDOW.get((meta.get("Preprocessing") or {}).get("normalization"))
        image = mosaic(np.load(tensor, mmap_mode="r") if array is None else array, window)
        with atomic_path(out) as tmp:
            tmp.write_bytes(png_bytes(image))
        return out
    except Exception as exc:  # QC is a convenience, the tensor is what matters
        log.warning("no QC mosaic for %s (%s: %s)", Path(tensor).name, type(exc).__name__, exc)
        return None


def _compact(value: object) -> object:
    """Short text of a sidecar value: floats with 4 significant digits."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


def _tile(output_dir: Path, sidecar: Path) -> str:
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    tensor = sidecar.with_suffix(".npy")
    png = mosaic_path(output_dir, tensor)
    entities = meta.get("Entities") or {}
    info = meta.get("PreprocessingInfo") or {}
    facts = [("subject", entities.get("subject")), ("session", entities.get("session")),
             ("shape", meta.get("Shape")), ("voxel size (mm)", meta.get("VoxelSize")),
             ("source", (meta.get("Sources") or [""])[0]),
             ("source orientation", info.get("source_orientation")),
             ("intensity", _compact(info.get("intensity"))),
             ("normalisation", (meta.get("Preprocessing") or {}).get("normalization"))]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in facts if v not in (None, "null"))
    if png.is_file():
        src = escape(png.relative_to(output_dir).as_posix())
        image = f'<img src="{src}" alt="{escape(tensor.name)}">'
    else:
        image = '<p class="missing">no mosaic (see the participant-level log)</p>'
    return (f'<div class="tile" data-tensor="{escape(tensor.relative_to(output_dir).as_posix())}">'
            f"<b>{escape(tensor.name)}</b><br>{image}<table>{rows}</table></div>\n")


STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 1em 2em; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { border: 1px solid #ccc; padding: 5px; font-size: 11px; width: 330px; overflow-wrap: anywhere; }
.tile img { image-rendering: pixelated; width: 320px; background: #000; }
.tile table { border-collapse: collapse; margin-top: 3px; }
.tile th { text-align: left; padding-right: 6px; color: #555; font-weight: normal; vertical-align: top;
           white-space: nowrap; }
.missing { color: #8a5a00; background: #fff6e0; padding: .3em; }
"""


def write_qc_page(output_dir: Path) -> Path | None:
    """Rebuild ``OUTPUT_DIR/qc.html`` from every tensor sidecar; None (and a warning) on failure.

    Many participant jobs may end at once: the listing and the write happen under the output
    folder's lock, so the last job to finish writes a page that lists every image.
    """
    output_dir = Path(output_dir)
    path = output_dir / PAGE
    try:
        with folder_lock(output_dir):
            sidecars = sorted(p for p in output_dir.glob("sub-*/**/*_desc-tensor_*.json")
                              if not p.name.endswith("_dseg.json") and p.with_suffix(".npy").is_file())
            tiles = []
            for sidecar in sidecars:
                try:
                    tiles.append(_tile(output_dir, sidecar))
                except (OSError, ValueError) as exc:
                    tiles.append(f'<div class="tile"><b>{escape(sidecar.name)}</b>'
                                 f'<p class="missing">unreadable sidecar: {escape(str(exc))}</p></div>')
            subjects = {p.relative_to(output_dir).parts[0] for p in sidecars}
            text = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                    f"<title>neurodl QC: {escape(output_dir.name)}</title>\n<style>{STYLE}</style>\n"
                    "</head>\n<body>\n<h1>Extracted tensors: quality control</h1>\n"
                    f"<p>{len(sidecars)} image(s) of {len(subjects)} participant(s) in "
                    f"{escape(str(output_dir))}. Each mosaic shows the "
                    "middle sagittal, coronal and axial slices of the stored tensor (superior up; "
                    "anterior to the right in the sagittal slice, up in the axial one; the "
                    "subject's right on the right). Check orientation, cropping and intensity.</p>\n"
                    f'<div class="grid">\n{"".join(tiles)}</div>\n</body>\n</html>\n')
            # the same images give the same page: rewritten only when something changed
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_text(path, text)
        return path
    except Exception as exc:  # the tensors are written; the page is a convenience
        log.warning("could not write %s (%s: %s)", path, type(exc).__name__, exc)
        return None
