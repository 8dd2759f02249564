#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests/test_tune.py's two-workers-one-study test.
# Prints shell lines to eval: `eval "$(.ci/postgres.sh)"` sets MNIST_CNN_TEST_PG (the URL the
# test uses) and MNIST_CNN_TEST_PG_DIR (the cluster; stop it with
# `pg_ctl -D "$MNIST_CNN_TEST_PG_DIR" stop`, run as the postgres user when root).
# Installs Debian's `postgresql` package when initdb is missing and this runs as root (CI);
# MNIST_CNN_PG_NO_INSTALL=1 never installs. Trust auth on 127.0.0.1 only: a test server.
set -euo pipefail
find_bin() { command -v "$1" 2>/dev/null || ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1; }
if [ -z "$(find_bin initdb)" ]; then
    if [ "${MNIST_CNN_PG_NO_INSTALL:-0}" = 1 ] || [ "$(id -u)" != 0 ]; then
        echo "postgres.sh: initdb not found; install Debian's postgresql package" >&2; exit 1
    fi
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
fi
INITDB=$(find_bin initdb); PG_CTL=$(find_bin pg_ctl)
dir=$(mktemp -d /tmp/mnist-cnn-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then   # initdb refuses to run as root
    chown postgres: "$dir"
    as_pg=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$INITDB" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$PG_CTL" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=50 -c fsync=off" start >/dev/null
"${as_pg[@]}" "$(find_bin createdb)" -h 127.0.0.1 -p "$port" -U postgres mnist_cnn_test
echo "export MNIST_CNN_TEST_PG=postgresql://postgres@127.0.0.1:$port/mnist_cnn_test"
echo "export MNIST_CNN_TEST_PG_DIR=$dir/data"
