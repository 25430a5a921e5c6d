#!/usr/bin/env bash
# Fill .whl/ with the wheels a lent GPU machine needs to run `pretrain train`, the kernel tests
# and the benchmarks (`bench/gpu_run.sh` installs them there). That machine has Python 3.12
# with CUDA torch, triton, numpy, pandas, pyarrow, transformers, tokenizers, pytest and more
# (/work/.library/device/KINDS.md), and no network. This carries what our code imports that
# it lacks, at the versions of requirements/lock-cpu.txt. DeepSpeed is an sdist: its wheel is
# built here (pure Python with DS_BUILD_OPS=0; its ops compile on first use there).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-.venv/bin/python}
PY_VERSION=${PY_VERSION:-3.12}  # the GPU machine's Python
MISSING=(
  deepspeed hjson pydantic pydantic_core annotated-types typing-inspection  # the engines
  omegaconf                                                                # configs
  mosaicml-streaming catalogue python-snappy cramjam zstd brotli dill      # shards
  boto3 botocore s3transfer jmespath google-cloud-storage google-cloud-core google-api-core
  google-auth google-resumable-media googleapis-common-protos opentelemetry-api
  cryptography cffi pyOpenSSL bcrypt chardet pytz  # imported by streaming's storage module
)
pins=()
for name in "${MISSING[@]}"; do
  pin=$(grep -i -E "^${name//[-_]/[-_]}==" requirements/lock-cpu.txt) \
    || { echo "gpu_wheels: $name is not in requirements/lock-cpu.txt" >&2; exit 2; }
  pins+=("$pin")
done
# zstd 1.5.7.2 has no Python 3.12 wheel for x86-64. 1.5.7.3 has one (yanked as not thread
# safe): streaming only imports it, since our shards are written uncompressed.
pins=("${pins[@]/zstd==1.5.7.2/zstd==1.5.7.3}")
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
deepspeed_pin=${pins[0]}
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation \
  -w "$WHEELS" "$deepspeed_pin"
platforms=()  # pip matches manylinux tags exactly: offer every glibc up to the machine's
for tag in manylinux1 manylinux2014 manylinux_2_{17,24,27,28,31,34,35}; do
  platforms+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${platforms[@]}" -d "$WHEELS" "${pins[@]:1}" 2>&1 | grep -v "is ignored"
du -sh "$WHEELS"
ls "$WHEELS"
