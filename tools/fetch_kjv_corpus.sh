#!/bin/sh
# Extract the King James Version of the Bible (public domain; Debian package
# bible-kjv-text, read with the package's own `bible` program) as plain text,
# one verse per line, without verse references. No network beyond apt.
#
#   sh tools/fetch_kjv_corpus.sh OUT.txt
#
# The output (about 4.3 MB) is not committed; examples/train/README.md uses it.
set -eu
out=${1:-kjv.txt}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download bible-kjv-text bible-kjv >/dev/null
for f in *.deb; do dpkg -x "$f" root; done
# -f off: one verse per line, each prefixed with its reference ("Ge1:1 ...").
./root/usr/bin/bible -p root/usr/lib -f "Gen1:1-Rev22:21" | sed -e 's/^[^ ]* //' -e '/^$/d' > kjv.txt
cd - >/dev/null
cp "$work/kjv.txt" "$out"
wc -c "$out"
