#!/bin/sh
# Packages cargo's libringlog.a for shipping: one relocatable object whose only global symbols
# are the `ringlog_*` functions. cargo's static library also exports every Rust symbol of the
# library and its dependencies, and glommio's bundled liburing (`io_uring_*`, liburing 2.0),
# which can clash with, or silently replace, a program's own liburing.
#
#   capi/scripts/package-static.sh target/release/libringlog.a dist/libringlog.a
#
# How: `ld -r --whole-archive` links every member into one object (their references to each
# other resolved inside it), then `objcopy --keep-global-symbols` makes every defined symbol
# but the ringlog_* ones local. Undefined symbols (libc, libgcc_s, ...) stay as they are.
# Needs GNU binutils (ld, objcopy, readelf, ar).
set -eu
in=$1
out=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ld -r --whole-archive "$in" -o "$work/ringlog.o"
readelf -sW "$work/ringlog.o" |
    awk '($5 == "GLOBAL" || $5 == "WEAK") && $7 != "UND" && $8 ~ /^ringlog_/ { print $8 }' |
    sort -u > "$work/keep"
test -s "$work/keep" || { echo "no ringlog_* symbol in $in" >&2; exit 1; }
# The embedded LLVM bitcode (.llvmbc, only for LTO) goes too: binutils' nm/ar hand objects
# carrying it to an installed LLVMgold plugin, which may abort on rustc's bitcode.
objcopy --keep-global-symbols="$work/keep" --remove-section=.llvmbc \
    --remove-section=.llvmcmd "$work/ringlog.o"
rm -f "$out"
ar rcs "$out" "$work/ringlog.o"
