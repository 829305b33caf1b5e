#!/usr/bin/env bash
# Install onnxruntime-gpu on the lent GPU machine (no network there) from the slim repack that
# tools/slim_ort_wheel.py split into parts; one part travels per call (the 64 MiB tree limit).
# Run from the repository root on the device, each call carrying `.whl-ort/MANIFEST` and one
# `.whl-ort/ort.whl.xz.partNN`: the part is kept in /tmp/ortparts (it lives while the machine is
# warm); once all are there they are joined, checked against the MANIFEST's sha256 and
# `pip install --no-deps --target /tmp/ort`-ed. Then: export PYTHONPATH=/tmp/ort:$PYTHONPATH.
set -euo pipefail
src=${1:-.whl-ort}
parts=/tmp/ortparts
target=/tmp/ort
mkdir -p "$parts"
if [ -f "$target/onnxruntime/__init__.py" ]; then
    echo "install_ort_gpu: onnxruntime-gpu already in $target"
    exit 0
fi
cp "$src"/ort.whl.xz.part* "$parts"/ 2>/dev/null || true
field() { awk -v k="$1" '$1 == k {print $2}' "$src/MANIFEST"; }
need=$(field parts)
have=$(find "$parts" -name 'ort.whl.xz.part*' | wc -l)
if [ "$have" -lt "$need" ]; then
    echo "install_ort_gpu: $have of $need parts in $parts: $(ls "$parts" | tr '\n' ' ')"
    exit 0
fi
wheel=/tmp/$(field wheel)
cat "$parts"/ort.whl.xz.part* > /tmp/ort.whl.xz
echo "$(field sha256)  /tmp/ort.whl.xz" | sha256sum -c --quiet
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open('/tmp/ort.whl.xz'), open(sys.argv[1], 'wb'))" "$wheel"
python3 -m pip install -q --no-deps --no-index --no-compile --target "$target" "$wheel"
rm -f /tmp/ort.whl.xz "$wheel"
PYTHONPATH=$target python3 -c "import onnxruntime as o; print('install_ort_gpu:', o.__version__, o.get_available_providers())"
