"""DICOM slices: the one decoder that training, the audit and prediction share.

``dicom_values(path, window)`` reads one single-frame slice with pydicom and returns its intensities
as float64 in [0, 1], high signal bright, at the file's full precision (12 or 16 bits are kept; the
8-bit step happens only where an 8-bit image is wanted, ``read_dicom``):

- the modality LUT (rescale slope/intercept) is applied (``apply_modality_lut``);
- ``window="file"`` (default): the file's VOI LUT or window centre/width (``apply_voi_lut``), its
  output range mapped to 0–1; a slice without window tags is stretched from its minimum to its maximum;
- ``window="auto"``: the file's window is ignored and the slice stretched from its minimum to its maximum;
- ``window="<center>,<width>"``: that window, in the rescaled (modality) units, clipped;
- MONOCHROME1 is inverted, so that high signal is bright, as in the training images.

A multi-frame file, a file without pixel data, a compressed one without a decoder or an unreadable one
raises :class:`DicomError` with one line saying so. Imports no torch and nothing of brainmri.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DICOM_EXTENSIONS = {".dcm", ".dicom", ".dic", ".ima"}
WINDOWS = ("file", "auto")  # or "<center>,<width>"


class DicomError(ValueError):
    """One DICOM file cannot be used; the message is one line naming the reason."""


def is_dicom(path: str | Path) -> bool:
    """A DICOM extension, or the ``DICM`` marker at byte 128 (a file named without extension)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def parse_window(window: str) -> tuple[float, float] | None:
    """``"file"``/``"auto"`` → None; ``"<center>,<width>"`` → (center, width); else ValueError."""
    if window in WINDOWS:
        return None
    try:
        center, width = (float(v) for v in str(window).split(","))
    except ValueError:
        raise ValueError(f"expected file, auto or <center>,<width>, got {window!r}") from None
    if not width > 0:
        raise ValueError(f"the window width must be > 0, got {window!r}")
    return center, width


def _voi_range(ds) -> tuple[float, float] | None:
    """The output range of pydicom's VOI transform for ``ds`` (None: the file has no VOI tags)."""
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    # as pydicom.pixels.processing.apply_windowing: the stored range, through the rescale if any
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _dataset(path: str | Path):
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise DicomError(f"unreadable DICOM: {type(e).__name__}: {_first_line(e)}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = getattr(ds, "Modality", None) or ds.get("SOPClassUID", "unknown SOP class")
        raise DicomError(f"DICOM without pixel data ({kind}): no image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames): give single slices, one per file")
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts is not None and ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:  # a syntax pydicom has no decoder for at all
            decoder = None
        if decoder is None or not decoder.is_available:
            need = ", ".join(d.split(" - ")[0] for d in decoder.missing_dependencies) if decoder else "a decoder"
            raise DicomError(f"compressed transfer syntax {ts.name} ({ts}) cannot be decoded here: "
                             f"install {need or 'a pydicom pixel-data plugin'}")
    return ds


def dicom_values(path: str | Path, window: str = "file") -> np.ndarray:
    """One DICOM slice as float64 intensities in [0, 1], high signal bright (see the module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _dataset(path)
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for malformed pixel data
        raise DicomError(f"cannot decode DICOM pixel data: {type(e).__name__}: {_first_line(e)}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # colour DICOM: pydicom returns RGB (YBR converted); reduce to grey like any colour image
        return np.asarray(Image.fromarray(np.asarray(arr, dtype=np.uint8)).convert("L"), np.float64) / 255.0
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    given = parse_window(window)
    file_range = _voi_range(ds) if window == "file" else None
    if given is not None:
        center, width = given
        lo, hi = center - width / 2, center + width / 2
    elif file_range is not None:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        lo, hi = file_range
    else:
        lo, hi = float(values.min()), float(values.max())
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":  # minimum value is white: invert to the training images' polarity
        scaled = 1.0 - scaled
    return scaled


def read_dicom(path: str | Path, window: str = "file") -> Image.Image:
    """One DICOM slice as an 8-bit grey-scale (mode ``L``) PIL image."""
    grey = np.clip(np.rint(dicom_values(path, window) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L")
