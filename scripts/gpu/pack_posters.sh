#!/usr/bin/env bash
# The built-in model's posters packed for the GPU step: WebP copies in the dataset layout
# (/work/shared/tools/gpu/pack_dataset.py), in tars small enough that one of them and the
# working tree travel in one device call (64 MiB a call, the tree included), plus .gpu-packs/MANIFEST
# (each tar and its number of posters: finetune_builtin.sh trains once every one has arrived).
#
#   bash scripts/gpu/pack_posters.sh [DATA [EXTRA]]
#       DATA  default ../shared/datasets/movie-posters; EXTRA default ~/.cache/postergenre-data/extra-posters
#   MAX_MB=N      largest tar in MiB (default: what the working tree leaves of 64 MiB, less 3 MiB, at most 58)
#   PACK_ARGS=... more options for pack_dataset.py (e.g. --quality 80; default 60)
#   RAW=1         the original files instead of WebP copies (scripts/gpu/pack_originals.py): no loss,
#                 ~1.5x the bytes (so more calls); see scripts/gpu/README.md
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
TOOL=${PACK_TOOL:-../shared/tools/gpu/pack_dataset.py}
DATA=${1:-../shared/datasets/movie-posters}
EXTRA=${2:-$HOME/.cache/postergenre-data/extra-posters}

# What travels in every call besides the carried paths: tracked files and untracked ones git does not ignore.
tree=$(git ls-files -z --cached --others --exclude-standard | "$PY" -c '
import os, sys
names = sys.stdin.buffer.read().split(b"\0")
print(sum(os.path.getsize(n) for n in names if n and os.path.isfile(n)))')
if [ -z "${MAX_MB:-}" ]; then
    MAX_MB=$(( (64 * 1048576 - tree) / 1048576 - 3 ))
    [ "$MAX_MB" -gt 58 ] && MAX_MB=58
    [ "$MAX_MB" -ge 4 ] || { echo "the working tree ($((tree / 1048576)) MiB) leaves no room for posters in a call" >&2; exit 1; }
fi
echo "working tree $((tree / 1048576)) MiB: tars of at most $MAX_MB MiB"

mkdir -p .git/info
for p in /.gpu-packs/ /.gpu-wheels/; do grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
if [ "${RAW:-0}" = 1 ]; then
    "$PY" scripts/gpu/pack_originals.py --out .gpu-packs --max-mb "$MAX_MB" "$DATA" "$EXTRA"
else
    # shellcheck disable=SC2086
    "$PY" "$TOOL" --out .gpu-packs --max-mb "$MAX_MB" ${PACK_ARGS:-} "$DATA" "$EXTRA"
fi
(cd .gpu-packs && for t in p*.tar; do echo "$t $(tar -tf "$t" | grep -c '/Images/')"; done) | sort -V > .gpu-packs/MANIFEST
cat .gpu-packs/MANIFEST
awk '{n += $2} END {print n " posters in " NR " tars"}' .gpu-packs/MANIFEST
