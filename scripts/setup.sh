#!/usr/bin/env bash
# Installs what klcl needs to build and test, from Debian's packages: the OpenCL ICD loader and headers,
# PoCL (an OpenCL device on the CPU), CLBlast, cmocka, CMake, pkg-config, oclgrind, clinfo, and clang with libFuzzer for the fuzzers. Run as root or with sudo.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    build-essential cmake pocl-opencl-icd ocl-icd-opencl-dev opencl-headers libclblast-dev \
    libcmocka-dev oclgrind clinfo pkg-config clang libclang-rt-14-dev python3-numpy
