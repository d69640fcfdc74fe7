"""A pydicom decoder plugin for 12-bit JPEG Extended (process 4) through imagecodecs.

GDCM, the decoder of ``mimkit[dicom]``, refuses 12-bit JPEG Extended, and the one pydicom plugin that
decodes it, pylibjpeg-libjpeg, wraps a GPL-3 library. imagecodecs (BSD-3-Clause, already in the extras for
TIFF) decodes it with libjpeg-turbo; :func:`mimkit.data.dicom.read_dicom` adds this module to pydicom's
``JPEGExtended12BitDecoder`` after its own plugins, so it runs only where they fail. pydicom's plugin
contract: ``is_available(uid)``, ``DECODER_DEPENDENCIES`` and a function ``(frame bytes, runner) ->
bytes`` returning the frame's pixels as pydicom lays them out (little-endian, ``BitsAllocated`` each).
"""

from __future__ import annotations

from typing import Any

JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"  # pydicom.uid.JPEGExtended12Bit
DECODER_DEPENDENCIES = {JPEG_EXTENDED_12BIT: ("imagecodecs>=2023.1",)}


def is_available(uid: str) -> bool:
    """imagecodecs with its JPEG codec, for 12-bit JPEG Extended only."""
    if uid != JPEG_EXTENDED_12BIT:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG8.available)


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One frame's JPEG stream -> its grey pixels, ``runner.bits_allocated`` bits each, little-endian."""
    import imagecodecs

    if runner.samples_per_pixel != 1:
        raise NotImplementedError("mimkit's imagecodecs plugin decodes grey 12-bit JPEG only")
    arr = imagecodecs.jpeg8_decode(src)
    if arr.ndim != 2:
        raise ValueError(f"a grey JPEG frame decoded to shape {arr.shape}")
    return arr.astype(f"<u{runner.bits_allocated // 8}").tobytes()
