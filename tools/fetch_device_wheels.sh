#!/usr/bin/env bash
# Rebuild .whl/ (repo root, gitignored) with the wheels listed in tools/device_wheels.txt,
# for the GPU machine: CPython 3.12, manylinux x86_64, no network there.
set -euo pipefail
cd "$(dirname "$0")/.."
LIST=tools/device_wheels.txt
DEST=.whl
mapfile -t SPECS < <(grep -v '^\s*#' "$LIST" | grep -v '^\s*$')
mkdir -p "$DEST"
python3 -m pip download --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${SPECS[@]}"
want=${#SPECS[@]}
got=$(find "$DEST" -maxdepth 1 -type f -name '*.whl' | wc -l)
echo "$got wheels in $DEST (want $want)"
if [ "$got" -ne "$want" ]; then
  echo "error: $DEST should hold exactly $want wheels; remove strays and rerun" >&2
  exit 1
fi
