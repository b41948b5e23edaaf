#!/usr/bin/env bash
# The GPU step of issue 28: the built-in model's network fine-tuned end to end on one CUDA GPU
# (the device tool's H200), on the built-in model's seed-1 split; the model directory comes back
# through $OUT and `scripts/rebuild_builtin.py --finetuned DIR` finishes it on any CPU.
# scripts/gpu/README.md gives the sequence of device calls.
#
# Run from the repository root on the device machine, with the project's source on PYTHONPATH
# (no install; its torch, not the pinned one). Everything it keeps lives in /dev/shm (GPU_STATE),
# which stays while the machine stays warm, so the posters go in over several calls:
#
#   bash scripts/gpu/finetune_builtin.sh [all|setup|unpack|train]
#
#   setup   install the carried wheels (.gpu-wheels/, scripts/gpu/pack_wheels.sh) with pip
#           --no-deps, check the GPU, the package and the backbone's weights
#   unpack  untar the carried poster packs (.gpu-packs/pK.tar, scripts/gpu/pack_posters.sh) into
#           /dev/shm/data, and say which of .gpu-packs/MANIFEST's packs are still missing
#   train   once every pack is in: check the split (the built-in model's, 1da527b5fd069cea), then
#           postergenre train --mode finetune --recipe poster --device cuda --seed 1 --test-fraction 0.15
#           into /dev/shm/model (resumed from its checkpoints if a call ran out of time), then
#           $OUT/model.tar.00, .01, ... (the directory as a tar, in parts of 15 MiB: $OUT takes 8
#           files of 16 MiB at most, and the model is 9 files, its weights ~18 MB), figures.json, train.log
#   all     (default) whichever of these the call makes possible, in that order
#
# Environment: TRAIN_SECONDS (default 480: training is stopped, its checkpoints kept, so that the
# call ends inside the tool's 600 s; call again to resume), TRAIN_ARGS (more train options, e.g.
# --compile or --epochs 12), EXPECT_SPLIT (default builtin; "any" skips the check), PYTHON (python3),
# DEVICE (default cuda; cpu for a dry run here), GPU_STATE (default /dev/shm), OUT (the device tool sets it).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
STATE=${GPU_STATE:-/dev/shm}
SITE=$STATE/site DATA=$STATE/data MODEL=$STATE/model CACHE=$STATE/cache
PY=${PYTHON:-python3}
OUT=${OUT:-$STATE/out}
TRAIN_SECONDS=${TRAIN_SECONDS:-480}
EXPECT_SPLIT=${EXPECT_SPLIT:-builtin}
export PYTHONPATH=$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$DATA/.unpacked" "$CACHE"
START=$(date +%s)
say() { echo "[$(($(date +%s) - START)) s] $*"; }

setup() {
    if compgen -G ".gpu-wheels/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu-wheels/*.whl \
            || { say "pip install of the carried wheels failed"; return 1; }
        touch "$SITE/.installed"
        say "installed: $(cd .gpu-wheels && ls *.whl | sed 's/-py.*//; s/-cp.*//' | tr '\n' ' ')"
    fi
    [ -f "$SITE/.installed" ] || { say "no wheels on this machine yet: call again carrying .gpu-wheels"; return 1; }
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" - <<'EOF'
import os, time
t = time.time()
import torch, postergenre
from postergenre.backbones import build_backbone
b = build_backbone("efficientnet_lite0_poster")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python ok: torch {torch.__version__} ({gpu}), postergenre {postergenre.__version__}, "
      f"backbone weights {b.weights_id} ({time.time() - t:.1f} s)", flush=True)
if not torch.cuda.is_available() and os.environ.get("DEVICE", "cuda").startswith("cuda"):
    raise SystemExit("torch sees no CUDA device")
EOF
}

missing() {  # prints which packs are in; 0 when every pack of the manifest is
    [ -f "$DATA/.unpacked/MANIFEST" ] || { say "no MANIFEST yet: carry .gpu-packs/MANIFEST with a pack"; return 1; }
    local want=0 have=0 miss=()
    while read -r name n; do
        want=$((want + n))
        if [ -f "$DATA/.unpacked/$name" ]; then have=$((have + n)); else miss+=("$name"); fi
    done < "$DATA/.unpacked/MANIFEST"
    say "posters in $DATA: $have of $want; packs missing: ${miss[*]:-none}"
    [ ${#miss[@]} -eq 0 ]
}

unpack() {
    [ -f .gpu-packs/MANIFEST ] && cp .gpu-packs/MANIFEST "$DATA/.unpacked/MANIFEST"
    local t
    for t in .gpu-packs/p*.tar; do
        [ -f "$t" ] || continue
        tar -xf "$t" -C "$DATA" || { say "cannot untar $t"; return 2; }
        touch "$DATA/.unpacked/$(basename "$t")"
        say "unpacked $(basename "$t") ($(du -m "$t" | cut -f1) MiB)"
    done
    missing
}

figures() {  # what the run gave: validation (and test) figures, seconds per epoch, posters/s
    "$PY" - "$MODEL" "$OUT/figures.json" <<'EOF'
import json, sys
from pathlib import Path
model, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = json.loads((model / "config.json").read_text())
history = json.loads((model / "history.json").read_text())
n_train = cfg["data"]["n_train"]
keys = ("micro_recall_at_3", "mAP", "ece")
fig = {"validation": {k: round(cfg["validation_metrics"][k], 4) for k in keys},
       "validation_uncalibrated": {k: round(cfg["validation_metrics_uncalibrated"][k], 4) for k in keys},
       "test_on_these_copies": {k: round(cfg["test_metrics"][k], 4) for k in keys} if cfg.get("test_metrics") else None,
       "epochs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} | (
                  {"posters_per_s": round(n_train / row["seconds"], 1)} if row.get("seconds") else {}) for row in history],
       "training_seconds": cfg.get("training_seconds"), "decode_seconds": cfg.get("feature_extraction_seconds"),
       "n_train": n_train, "split_fingerprint": cfg["data"]["split_fingerprint"], "recipe": cfg["recipe"]}
out.write_text(json.dumps(fig, indent=1) + "\n")
print(json.dumps({k: v for k, v in fig.items() if k != "recipe"}, indent=1))
EOF
}

train() {
    missing || return 1
    if [ -f "$MODEL/config.json" ]; then
        say "$MODEL is already trained: sending it back"
    else
        if [ "$EXPECT_SPLIT" != any ]; then
            "$PY" scripts/rebuild_builtin.py --split-only --data "$DATA/movie-posters" --extra-data "$DATA/extra-posters" \
                --expect-split "$EXPECT_SPLIT" || return 1
        fi
        local resume=()
        [ -d "$STATE/.model.checkpoints" ] && resume=(--resume) && say "resuming from $STATE/.model.checkpoints"
        say "training (stopped after $TRAIN_SECONDS s if not done)"
        # shellcheck disable=SC2086
        timeout --signal=INT --kill-after=60 "$TRAIN_SECONDS" \
            "$PY" -m postergenre train --mode finetune --recipe poster --device "${DEVICE:-cuda}" --seed 1 --test-fraction 0.15 \
            --data "$DATA/movie-posters" --extra-data "$DATA/extra-posters" --out "$MODEL" --cache-dir "$CACHE" \
            --quiet "${resume[@]}" ${TRAIN_ARGS:-} 2>&1 | tee -a "$OUT/train.log"
        local rc=${PIPESTATUS[0]}
        if [ ! -f "$MODEL/config.json" ]; then
            say "train stopped (exit $rc) before the model was saved; its checkpoints are in $STATE: call again to resume"
            return 3
        fi
    fi
    (cd "$MODEL" && tar -cf "$STATE/model.tar" -- *) || return 1
    split -b 15M -d -a 2 "$STATE/model.tar" "$OUT/model.tar."
    (cd "$STATE" && sha256sum model.tar) > "$OUT/model.tar.sha256"
    say "sent back: $(cd "$OUT" && ls model.tar.* | tr '\n' ' ')($(du -m "$STATE/model.tar" | cut -f1) MiB)"
    figures
}

case "${1:-all}" in
    setup) setup ;;
    unpack) unpack ;;
    train) train ;;
    all)
        if compgen -G ".gpu-wheels/*.whl" >/dev/null || [ ! -f "$SITE/.installed" ]; then setup || exit 1; fi
        unpack
        rc=$?
        [ $rc -eq 1 ] && exit 0  # packs still to come: the next call carries one
        [ $rc -ne 0 ] && exit $rc
        train
        ;;
    *) echo "usage: $0 [all|setup|unpack|train]" >&2; exit 2 ;;
esac
