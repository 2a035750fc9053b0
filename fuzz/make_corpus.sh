#!/usr/bin/env bash
# Writes the seed corpus of fuzz/run.sh: small valid and invalid .npy and .safetensors files, byte for
# byte reproducible. The files are committed; run this again only to change the seeds.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf corpus/npy corpus/safetensors
mkdir -p corpus/npy corpus/safetensors

# le BYTES VALUE: VALUE as BYTES little-endian bytes, as printf escapes.
le() {
    local n=$1 v=$2 i out=""
    for ((i = 0; i < n; i++)); do
        out+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255)))
    done
    printf '%s' "$out"
}

# npy FILE MAJOR DICT DATA-ESCAPES: header padded with spaces to a multiple of 64, ended by '\n'.
npy() {
    local file=$1 major=$2 dict=$3 data=$4 pre=10 lenbytes=2
    if [ "$major" -ne 1 ]; then pre=12 lenbytes=4; fi
    local total=$((pre + ${#dict} + 1))
    local pad=$(((64 - total % 64) % 64))
    local hlen=$((${#dict} + pad + 1))
    {
        printf '\x93NUMPY'
        printf "$(le 1 "$major")\\x00$(le "$lenbytes" "$hlen")"
        printf '%s%*s\n' "$dict" "$pad" ''
        printf "$data"
    } > "corpus/npy/$file"
}

# st FILE JSON DATA-ESCAPES
st() {
    local file=$1 json=$2 data=$3
    {
        printf "$(le 8 ${#json})"
        printf '%s' "$json"
        printf "$data"
    } > "corpus/safetensors/$file"
}

F4_6='\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x60\x40\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x80\x7f'
npy f4_2x3.npy 1 "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" "$F4_6"
npy f4_v2.npy 2 "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }" "$F4_6"
npy f4_3d.npy 1 "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }" "$F4_6"
npy f2_4.npy 1 "{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }" '\x00\x3c\x01\x00\x00\x7c\x00\x7e'
npy u2_2x2.npy 1 "{'descr': '<u2', 'fortran_order': False, 'shape': (2, 2), }" '\x80\x3f\x40\xc0\x80\x7f\x01\x00'
npy void2.npy 1 "{'descr': '|V2', 'fortran_order': False, 'shape': (2,), }" '\x80\x3f\x40\xc0'
npy i4_3.npy 3 "{\"descr\": '=i4', 'shape': (3L,), 'fortran_order': False}" '\x01\x00\x00\x00\xff\xff\xff\xff\x07\x00\x00\x00'
npy i8_2.npy 1 "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 1), }" '\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00'
npy fortran.npy 1 "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }" "$F4_6"
npy big_endian.npy 1 "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }" "$F4_6"
npy short_data.npy 1 "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }" "$F4_6"
npy bad_dict.npy 1 "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3) " "$F4_6"
printf '\x93NUMPY\x01\x00\xff\x00{}' > corpus/npy/header_beyond.npy
printf '\x93NUMPX\x01\x00\x02\x00{}' > corpus/npy/bad_magic.npy

F32_2='\x00\x00\x80\x3f\x00\x00\x00\xc0'
st one_f32.safetensors '{"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}}' "$F32_2"
st named_a.safetensors '{"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}    ' "$F32_2"
st multi.safetensors '{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[1,1,2],"data_offsets":[4,8]},"c\"\u00e9":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},"d":{"dtype":"I32","shape":[2],"data_offsets":[16,24]},"__metadata__":{"k":"v"}}' '\x00\x3c\x01\x00\x80\x3f\x40\xc0\x05\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\x07\x00\x00\x00'
st labels_i64.safetensors '{"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}' '\x00\x00\x00\x80\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00'
st f64.safetensors '{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}' "$F32_2"
st bad_offsets.safetensors '{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}' "$F32_2"
st nested.safetensors '{"__metadata__":[[[[{"x":[1.5e3,-2,true,null]}]]]],"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' "$F32_2"
printf '\xff\x00\x00\x00\x00\x00\x00\x00{}' > corpus/safetensors/header_beyond.safetensors
