#!/usr/bin/env bash
# Builds the uWebSockets peers that scripts/bench-compare.sh measures fanout against, from the
# unmodified uWebSockets v20.79.0-17-g66dcff3 / uSockets v0.8.8-17-g86097c4 sources (Apache-2.0)
# in a tarball, the way /work/shared/peers/build-uws.sh does (-O3 -march=native -flto, no SSL):
#   target/uws/uws-echo     examples/EchoServer.cpp, one thread, its port from $PORT (default
#                           9001; the only change to the example, made with sed at build time)
#   target/uws/uws-pubsub   uws-pubsub.cpp beside this script: subscribe in the URL, HTTP publish
# stdout gets the absolute path of each binary, one per line, in that order; the build log goes
# to stderr. A second run with nothing newer is a no-op. Nothing in the tests builds or needs it.
#
# usage: bench/peers/uws-pubsub/build.sh
#   UWS_TARBALL  the sources (default: /work/shared/peers/uwebsockets-*.tar.gz)
#   UWS_OUT      where to build (default: target/uws in the repository)
# Needs gcc, g++ and zlib1g-dev (apt-get install -y build-essential zlib1g-dev).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${UWS_OUT:-$root/target/uws}
tarball=${UWS_TARBALL:-}
if [ -z "$tarball" ]; then
    for t in /work/shared/peers/uwebsockets-*.tar.gz; do tarball=$t; done
fi
if [ -z "$tarball" ] || [ ! -f "$tarball" ]; then
    echo "uws build: no uWebSockets tarball; set UWS_TARBALL (uWebSockets v20.79.0-17-g66dcff3 with uSockets as uWebSockets/uSockets)" >&2
    exit 2
fi
for t in gcc g++ tar; do
    command -v "$t" >/dev/null || { echo "uws build: $t missing: apt-get install -y build-essential zlib1g-dev" >&2; exit 2; }
done
echo '#include <zlib.h>' | gcc -E -x c - >/dev/null 2>&1 ||
    { echo "uws build: zlib.h missing: apt-get install -y zlib1g-dev" >&2; exit 2; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
bins=("$out/uws-echo" "$out/uws-pubsub")
fresh=1
for b in "${bins[@]}"; do
    if [ ! -x "$b" ] || [ "$tarball" -nt "$b" ] || [ "$here/uws-pubsub.cpp" -nt "$b" ] || [ "$0" -nt "$b" ]; then
        fresh=0
    fi
done
if [ "$fresh" = 0 ]; then
    echo "== building uWebSockets peers in $out" >&2
    src=$out/src
    rm -rf "$src"
    mkdir -p "$src"
    tar -xzf "$tarball" -C "$src"
    u=$src/uWebSockets
    (cd "$u/uSockets" && gcc -march=native -O3 -flto=2 -DLIBUS_NO_SSL -std=c11 -Isrc \
        -c src/*.c src/eventing/*.c src/crypto/*.c src/io_uring/*.c)
    # EchoServer.cpp as it is but for the port it listens on.
    sed 's/9001/UWS_PORT/g' "$u/examples/EchoServer.cpp" >"$src/EchoServer.cpp"
    (cd "$u" && g++ -march=native -O3 -std=c++2b -Isrc -IuSockets/src -flto=2 \
        '-DUWS_PORT=(getenv("PORT") ? atoi(getenv("PORT")) : 9001)' \
        "$src/EchoServer.cpp" uSockets/*.o -lz -o "$out/uws-echo") >&2
    (cd "$u" && g++ -march=native -O3 -std=c++2b -Isrc -IuSockets/src -flto=2 \
        "$here/uws-pubsub.cpp" uSockets/*.o -lz -o "$out/uws-pubsub") >&2
fi
printf '%s\n' "${bins[@]}"
