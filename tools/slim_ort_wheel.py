"""Repack the onnxruntime-gpu wheel for one GPU architecture, xz-compressed and split in parts.

    python tools/slim_ort_wheel.py WHEEL OUTDIR [--sm 90] [--part-bytes 28000000]

The CUDA provider library carries SASS for sm_75/80/86/89/90/120 and no PTX. The payload of
every cubin for another architecture is zeroed (its fatbin entry header is kept, so the CUDA
runtime still parses the container and picks the sm_<N> entry, the only one it can run); the
TensorRT provider (needs libnvinfer) and the quantization tools are dropped. The wheel is stored
uncompressed and the whole file xz-compressed, then split into OUTDIR/ort.whl.xz.partNN;
OUTDIR/MANIFEST names the wheel, the part count and the sha256; tools/install_ort_gpu.sh puts
it back together. For sm_90 (H100/H200): 255 MB -> about 100 MB.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import lzma
import struct
import zipfile
from pathlib import Path

FATBIN_MAGIC, ELF_KIND = 0xBA55ED50, 2
DROP = ("libonnxruntime_providers_tensorrt.so", "onnxruntime/quantization/")


def zero_other_arches(data: bytearray, sm: int) -> int:
    """Zero the payload of every ELF cubin not for sm_<sm> in .nv_fatbin; bytes zeroed."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sec = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = sec[shstrndx][4]
    name = {data[names + s[0] : data.index(0, names + s[0])].decode(): s for s in sec}
    off, size = name[".nv_fatbin"][4], name[".nv_fatbin"][5]
    pos, zeroed = off, 0
    while pos < off + size:
        magic, _, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # containers are 8-byte aligned
            continue
        q = pos + hsize
        while q < pos + hsize + fsize:
            kind, _, ehs, padded = struct.unpack_from("<HHII", data, q)
            arch = struct.unpack_from("<I", data, q + 28)[0]
            if kind == ELF_KIND and arch != sm:
                data[q + ehs : q + ehs + padded] = bytes(padded)
                zeroed += padded
            q += ehs + padded
        pos += hsize + fsize
    return zeroed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("wheel", type=Path)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--sm", type=int, default=90)
    ap.add_argument("--part-bytes", type=int, default=26_000_000)
    ap.add_argument("--preset", type=int, default=9, help="xz preset (9 | extreme: smallest)")
    a = ap.parse_args()
    a.outdir.mkdir(parents=True, exist_ok=True)
    slim = a.outdir / "ort.whl"
    records = []
    with zipfile.ZipFile(a.wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_STORED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        for info in src.infolist():
            if info.filename == record_name or any(d in info.filename for d in DROP):
                continue
            data = bytearray(src.read(info))
            if info.filename.endswith("libonnxruntime_providers_cuda.so"):
                print(f"zeroed {zero_other_arches(data, a.sm) / 1e6:.1f} MB of non-sm_{a.sm} SASS")
            dst.writestr(info, bytes(data))
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{info.filename},sha256={digest.decode()},{len(data)}")
        dst.writestr(record_name, "\n".join([*records, f"{record_name},,"]) + "\n")
    packed = lzma.compress(slim.read_bytes(), preset=a.preset | lzma.PRESET_EXTREME)
    slim.unlink()
    for old in a.outdir.glob("ort.whl.xz.part*"):
        old.unlink()
    for i in range(0, len(packed), a.part_bytes):
        (a.outdir / f"ort.whl.xz.part{i // a.part_bytes:02d}").write_bytes(
            packed[i : i + a.part_bytes]
        )
    manifest = {"wheel": a.wheel.name, "parts": -(-len(packed) // a.part_bytes), "sm": a.sm}
    manifest["sha256"] = hashlib.sha256(packed).hexdigest()
    (a.outdir / "MANIFEST").write_text("".join(f"{k} {v}\n" for k, v in manifest.items()))
    print(f"{len(packed) / 1e6:.1f} MB in {-(-len(packed) // a.part_bytes)} parts under {a.outdir}")


if __name__ == "__main__":
    main()
