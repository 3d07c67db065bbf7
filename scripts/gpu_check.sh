#!/usr/bin/env bash
# The GPU check of scripts/gpu_check.py on a machine that has PyTorch and Triton but no package registry.
#
#   bash scripts/gpu_check.sh wheels [DIR]        # here, with a registry: the wheels the GPU machine lacks (.whl/)
#   bash scripts/gpu_check.sh run OUT [DIR]       # there: install those wheels beside (never over) its torch and
#                                                 # triton, make the project importable, run every step into OUT,
#                                                 # and pack OUT (logs, JSON, profiles; no weights) as OUT.tgz
#
# The wheels are for CPython 3.12 on x86-64 (the GPU image's python3); torch, triton, numpy, lightning,
# tokenizers, safetensors and matplotlib are taken from that image as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
command=${1:?usage: gpu_check.sh wheels [DIR] | run OUT [DIR]}

if [ "$command" = wheels ]; then
    dir=${2:-.whl}
    platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$dir" hydra-core==1.3.8 omegaconf==2.3.1 zstandard==0.25.0 \
        xlstm==2.0.6 mlstm_kernels==2.0.6
    python3 -m pip wheel -q --no-deps -w "$dir" antlr4-python3-runtime==4.9.3  # published as a source archive only
    ls -l "$dir"
elif [ "$command" = run ]; then
    out=${2:?usage: gpu_check.sh run OUT [DIR]}
    dir=${3:-.whl}
    site=/tmp/xlstm_lm_site
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$dir"/*.whl
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    mkdir -p "$out"
    python3 -m pip list 2>/dev/null | grep -i -E '^(torch|triton|lightning|transformers) ' >"$out/packages.txt" || true
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
    status=0
    python3 scripts/gpu_check.py --out "$out" "${@:4}" || status=$?
    # no weights: a run cut off while saving leaves temporary checkpoint files of gigabytes
    tar czf "$out.tgz" -C "$out" --exclude='./lightning_run/checkpoints' --exclude='*.safetensors*' .
    exit $status
else
    echo "unknown command $command: use wheels or run" >&2
    exit 2
fi
