#!/usr/bin/env bash
# Times prefill and decode on webgpu and cuda (when its provider is installed) for the Qwen2.5-0.5B shape and
# the quantised profiles; writes benchmarks/results/gpu-<date>.json. For a machine with a real GPU; not CI.
# Under 5 minutes there (it stops at 5). BENCH_GPU_SHAPE=tiny: a dry run on a 2-layer model, which SwiftShader
# runs on a machine without a GPU (Debian's chromium package provides its Vulkan ICD).
set -euo pipefail
cd "$(dirname "$0")/.."
# The dry run uses SwiftShader unless told otherwise: Mesa's drivers without their GPU give Dawn no adapter
# (it rejects lavapipe: "Vulkan shaderUniform*ArrayDynamicIndexing required"). A real run leaves the choice to
# the Vulkan loader, unless it has no driver at all.
SWIFTSHADER=/usr/lib/chromium/vk_swiftshader_icd.json
if [ -z "${VK_ICD_FILENAMES:-}" ] && [ -f "$SWIFTSHADER" ] && { [ "${BENCH_GPU_SHAPE:-}" = tiny ] || {
  ! compgen -G '/usr/share/vulkan/icd.d/*.json' >/dev/null && ! compgen -G '/etc/vulkan/icd.d/*.json' >/dev/null
}; }; then
  echo "gpu.sh: using SwiftShader (software Vulkan on the CPU): $SWIFTSHADER" >&2
  export VK_ICD_FILENAMES="$SWIFTSHADER"
fi
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi
exec timeout 300 node_modules/.bin/tsx benchmarks/gpu.ts
