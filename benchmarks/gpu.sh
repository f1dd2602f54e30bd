#!/usr/bin/env bash
# Times prefill and decode on webgpu and cuda (when its provider is installed) for the Qwen2.5-0.5B shape and
# the quantised profiles; writes benchmarks/results/gpu-<date>.json. For a machine with a real GPU; not CI.
# Under 5 minutes there (it stops at 5). BENCH_GPU_SHAPE=tiny: a dry run on a 2-layer model, which SwiftShader
# runs on a machine without a GPU (Debian's chromium package provides its Vulkan ICD).
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFTSHADER=/usr/lib/chromium/vk_swiftshader_icd.json
if [ -z "${VK_ICD_FILENAMES:-}" ] && ! compgen -G '/usr/share/vulkan/icd.d/*.json' >/dev/null \
  && ! compgen -G '/etc/vulkan/icd.d/*.json' >/dev/null && [ -f "$SWIFTSHADER" ]; then
  echo "gpu.sh: no Vulkan driver installed; using SwiftShader (software, on the CPU)" >&2
  export VK_ICD_FILENAMES="$SWIFTSHADER"
fi
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi
exec timeout 300 node_modules/.bin/tsx benchmarks/gpu.ts
