#!/usr/bin/env bash
# Install the HTTP load generator bench/bench_server.py drives (wrk, Debian package), when missing.
# There is no constant-rate tool in Debian (wrk2 is not packaged): bench/openloop.py, in Python, does that part.
# Under CI=true a tool that is still missing afterwards is a failure; elsewhere the bench says what is missing.
set -u

have() { command -v "$1" >/dev/null 2>&1; }

if ! have wrk; then
    if have apt-get && [ "$(id -u)" = 0 ]; then
        echo "install-load-tools: apt-get install wrk"
        { apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }; } >/dev/null 2>&1
    else
        echo "install-load-tools: wrk is missing; install it as root: apt-get install -y wrk" >&2
    fi
fi
if ! have taskset && have apt-get && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq util-linux >/dev/null 2>&1  # taskset: pins the server and the load to their cores
fi

status=0
for tool in wrk taskset; do
    if ! have "$tool"; then
        echo "install-load-tools: $tool is not installed" >&2
        [ "${CI:-}" = "true" ] && status=1
    fi
done
exit $status
