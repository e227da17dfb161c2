#!/usr/bin/env bash
# Build RELION 5 (CPU only, no GUI) from source for the peer benchmarks in benchmarks/.
# Not used by CI; it takes tens of minutes to hours on a small machine.
#
#   benchmarks/peers/build_relion.sh [SOURCE] [BUILD_DIR]
#
# SOURCE     a RELION source tree, or a git directory (bare or not) holding RELION's
#            history; absent: `git clone https://github.com/3dem/relion`.
# BUILD_DIR  where the build goes (default $RELION_BUILD_DIR or /work/relion-build);
#            the programs end up in BUILD_DIR/bin.
# RELION_REF     the tag or commit taken from a git SOURCE (default 5.0.1).
# RELION_JOBS    make -j (default 2).
# RELION_TARGETS the programs to build (default: reconstruct, postprocess, mask_create,
#                refine, then run_motioncorr and autopick).  Each is built in turn and
#                the script goes on when one fails, so the first ones are usable early.
# RELION_NO_APT=1 skips apt-get (the packages must then be there already).
#
# Configured with -DCUDA=OFF -DALTCPU=OFF (plain CPU code; ALTCPU would also need TBB)
# -DGUI=OFF (no X11/FLTK) -DFETCH_WEIGHTS=OFF (no model downloads at configure time)
# -DFORCE_OWN_FFTW=OFF (Debian's libfftw3-dev, single and double precision).
set -euo pipefail

src_arg="${1:-}"
build_dir="${2:-${RELION_BUILD_DIR:-/work/relion-build}}"
ref="${RELION_REF:-5.0.1}"
jobs="${RELION_JOBS:-2}"
targets="${RELION_TARGETS:-relion_reconstruct relion_postprocess relion_mask_create relion_refine relion_run_motioncorr relion_autopick}"

log() { echo "[build_relion $(date -u +%H:%M:%S)] $*"; }

if [ "${RELION_NO_APT:-0}" != 1 ]; then
    pkgs=(cmake g++ make git libfftw3-dev libopenmpi-dev openmpi-bin libtiff-dev libpng-dev libjpeg-dev zlib1g-dev)
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" \
            || { apt-get update -qq && apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"; }
    fi
fi

mkdir -p "$build_dir"
src_dir="$build_dir/src"
if [ -z "$src_arg" ]; then
    if [ ! -f "$src_dir/CMakeLists.txt" ]; then
        log "cloning https://github.com/3dem/relion at $ref"
        git clone --depth 1 --branch "$ref" https://github.com/3dem/relion "$src_dir"
    fi
elif [ -f "$src_arg/CMakeLists.txt" ] && [ -d "$src_arg/src" ]; then
    src_dir="$(cd "$src_arg" && pwd)"
elif git --git-dir="$src_arg" rev-parse --git-dir >/dev/null 2>&1 \
    || git --git-dir="$src_arg/.git" rev-parse --git-dir >/dev/null 2>&1; then
    gd="$src_arg"
    [ -d "$src_arg/.git" ] && gd="$src_arg/.git"
    if [ ! -f "$src_dir/CMakeLists.txt" ]; then
        log "exporting $ref from git directory $gd"
        mkdir -p "$src_dir"
        git --git-dir="$gd" archive --format=tar "$ref" | tar -x -C "$src_dir"
    fi
else
    echo "build_relion.sh: $src_arg is neither a RELION source tree nor a git directory" >&2
    exit 2
fi

obj_dir="$build_dir/obj"
mkdir -p "$obj_dir"
log "configuring $src_dir in $obj_dir"
cmake -S "$src_dir" -B "$obj_dir" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCUDA=OFF -DALTCPU=OFF -DGUI=OFF -DFETCH_WEIGHTS=OFF -DFORCE_OWN_FFTW=OFF \
    -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$build_dir/bin"

failed=()
for t in $targets; do
    # RELION's CMake targets drop the relion_ prefix (target reconstruct makes
    # bin/relion_reconstruct).
    log "building $t (make -j$jobs)"
    if cmake --build "$obj_dir" --target "${t#relion_}" -- -j"$jobs"; then
        log "built $t"
    else
        log "FAILED $t"
        failed+=("$t")
    fi
done
# The programs land in $obj_dir/bin unless the variable above took; link them into bin/.
mkdir -p "$build_dir/bin"
for t in $targets; do
    if [ -x "$obj_dir/bin/$t" ] && [ ! -e "$build_dir/bin/$t" ]; then
        ln -s "$obj_dir/bin/$t" "$build_dir/bin/$t"
    fi
done
ls -l "$build_dir/bin"
if [ ${#failed[@]} -gt 0 ]; then
    log "failed: ${failed[*]}"
    exit 1
fi
log "done"
