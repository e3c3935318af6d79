{
  # quant4 native compute addon: thin N-API wrappers over BLAS (sgemm, ssyrk) and LAPACK
  # (spotrf, strtri), the packed-weight runtime kernels (src/qkernels.cc: GEMV/GEMM straight from
  # INT2..8 and fp16 weights), the block ops (src/blockops.cc: norms, RoPE, attention, activations) and
  # GPTQ's column loop (src/gptqloop.cc, no FP contraction: a pragma in the file);
  # AVX2/FMA per function with runtime dispatch, so no -mavx2 here. Linux links OpenBLAS; macOS links the Accelerate framework.
  # Build with `npm run build:native` (scripts/build-native.mjs), which passes --nodedir so
  # node-gyp never downloads headers.
  "targets": [
    {
      "target_name": "quant4_native",
      "sources": ["src/quant4_native.cc", "src/qkernels.cc", "src/blockops.cc", "src/gptqloop.cc"],
      "include_dirs": [
        "<!(node -p \"require('path').dirname(require.resolve('node-addon-api/package.json'))\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3"],
      "conditions": [
        ["OS=='linux'", {
          # Extra include dirs (e.g. /usr/include/openblas on Fedora) found by the build script.
          "include_dirs": ["<!@(node ../scripts/build-native.mjs --print-blas-include-dirs)"],
          "libraries": ["-lopenblas"]
        }],
        ["OS=='mac'", {
          "defines": ["QUANT4_ACCELERATE", "ACCELERATE_NEW_LAPACK"],
          "libraries": ["-framework Accelerate"],
          "xcode_settings": {
            "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
            "GCC_OPTIMIZATION_LEVEL": "3",
            "MACOSX_DEPLOYMENT_TARGET": "13.3"
          }
        }]
      ]
    }
  ]
}
