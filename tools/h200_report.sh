#!/usr/bin/env bash
# The H200 report on the lent machine (no network, 10-minute calls), in two calls while it stays
# warm, at one commit; the stages of the first are reused by the second as `make report` reuses
# them. From the repository root there:
#   SAMREP_GIT_COMMIT=<commit> bash tools/h200_report.sh gpu-rows   # carry .whl, .whl-ort part 0
#   SAMREP_GIT_COMMIT=<commit> bash tools/h200_report.sh report     # carry .whl-ort parts 1-3
# 1. gpu-rows: the ground truth, every row that needs no ONNX Runtime, the fast steps;
# 2. report: onnxruntime-gpu installed, the whole chain (exports, ORT rows, interactive, summary).
# Results live in build/h200 (ignored, so it survives between calls; reports/h200 points there)
# and come back as one tarball in $OUT.
set -euo pipefail
: "${SAMREP_GIT_COMMIT:?set SAMREP_GIT_COMMIT (the tree on the device has no .git)}"
phase=${1:?gpu-rows or report}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ -d /tmp/site/papermill ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
bash tools/install_ort_gpu.sh
site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
LD_LIBRARY_PATH=$(printf '%s:' "$site"/nvidia/*/lib)${LD_LIBRARY_PATH:-}  # ORT's CUDA EP libraries
export LD_LIBRARY_PATH PYTHONPATH=/tmp/ort:/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
mkdir -p build/h200
rm -rf reports/h200 && ln -s ../build/h200 reports/h200
keep=(val-torch-fp32-bs8 val-torch-tf32-bs8 val-torch-fp16-bs8 val-torch-bf16-bs1 val-torch-bf16-bs8
    val-torch-bf16-bs32 infer-inductor-bf16-bs16 infer-fast-bf16-bs16 infer-fast-bf16-bs32
    infer-fast-fp8-bs32)
set +e  # a failed row or stage still brings back what was made (the record says why)
case $phase in
gpu-rows)
    python3 -m samrep groundtruth --hw h200 && {
        python3 -m samrep evaluate --hw h200 --only "${keep[@]}"
        python3 -m samrep steps --hw h200 --bs 16 --only 0 8 9 10 11
    }
    ;;
report)
    python3 -m samrep report --hw h200
    ;;
esac 2>&1 | tee "$OUT/h200-$phase.log"
tar -C build -czf "$OUT/h200-$phase.tar.gz" --exclude='*.tmp*' h200
