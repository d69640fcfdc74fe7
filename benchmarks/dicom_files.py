"""Every DICOM test file pydicom ships, read by mimkit: the outcome by transfer syntax, and the one line a
folder of them reports.

    python benchmarks/dicom_files.py [--folder]

Reads the files of the installed pydicom's ``data/test_files`` (the ~86 it ships, and the DICOMDIR test
tree beside them), the files a folder would list (``.dcm``, and extension-less files with DICOM's
preamble), without ``pydicom.data.get_testdata_files()``: that one also fetches the pydicom-data
repository from the network. A multi-frame file counts as loaded when each of its frames loads
(``frame=k``). The table says, per transfer syntax, how many files loaded and why the others were skipped;
what decodes depends on the plugins installed (``pip install 'mimkit[dicom]'``), listed first.
``--folder`` also builds a dataset of the folder and prints its skipped-files line.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter, defaultdict
from pathlib import Path

from mimkit.data.arrays import reason_kind
from mimkit.data.dicom import dicom_frame_count, read_dicom
from mimkit.data.images import list_images


def test_files() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def plugins() -> str:
    """The decoder packages importable here, with their versions."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("pydicom", "python-gdcm", "imagecodecs", "pylibjpeg", "pylibjpeg-openjpeg",
                 "pylibjpeg-libjpeg", "pylibjpeg-rle", "pyjpegls", "pillow"):  # fmt: skip
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


def syntax_of(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM as pydicom reads it: the reader says why
        return "(not readable)"
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return uid.keyword or str(uid) if uid is not None else "(none)"


def outcome(path: Path) -> tuple[str, str]:
    """``("loaded", "N frames")`` or ``("skipped", reason)``."""
    try:
        frames = dicom_frame_count(path)
        for k in range(frames):
            read_dicom(path, frame=k if frames > 1 else None)
    except ValueError as err:
        return "skipped", str(err)
    return "loaded", f"{frames} frame(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", action="store_true", help="also read the folder as a dataset")
    args = parser.parse_args()
    root = test_files()
    files = list_images(root)
    print(f"{len(files)} DICOM files under {root}\ndecoders installed: {plugins()}\n")
    table: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    frames_loaded = 0
    for path in files:
        status, detail = outcome(path)
        key = "loaded" if status == "loaded" else reason_kind(str(path), detail)
        table[syntax_of(path)][key] += 1
        totals[key] += 1
        frames_loaded += int(detail.split()[0]) if status == "loaded" else 0
    print("| transfer syntax | files | loaded | skipped, by reason |\n| --- | ---: | ---: | --- |")
    for syntax, counts in sorted(table.items(), key=lambda item: -sum(item[1].values())):
        skipped = ", ".join(f"{n} {kind}" for kind, n in counts.most_common() if kind != "loaded")
        print(f"| {syntax} | {sum(counts.values())} | {counts['loaded']} | {skipped} |")
    skipped = ", ".join(f"{n} {kind}" for kind, n in totals.most_common() if kind != "loaded")
    print(f"| all | {len(files)} | {totals['loaded']} ({frames_loaded} frames) | {skipped} |")
    if args.folder:
        from mimkit.data import DataConfig, build_dataset

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        cfg = DataConfig(source="folder", root=str(root), labeled=False, channels=1, img_size=32)
        print(f"\nthe folder as a dataset: {len(build_dataset(cfg, 'train'))} images")


if __name__ == "__main__":
    main()
