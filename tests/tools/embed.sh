#!/bin/sh
# Emits a C file defining `const char NAME[]` with the bytes of FILE (NUL-terminated).
set -eu
name=$1
file=$2
printf '/* Generated from %s by tests/tools/embed.sh; do not edit. */\n' "$file"
printf 'const char %s[] = {\n' "$name"
od -An -v -tx1 "$file" | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g' -e 's/^/    /'
printf '    0x00};\n'
