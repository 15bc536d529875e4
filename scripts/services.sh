#!/usr/bin/env bash
# Start the local Redis and PostgreSQL servers that the tests talk to, when they are installed but not running.
# Under CI=true a server that cannot be reached afterwards is a failure; elsewhere the tests that need it skip.
set -u
status=0

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }

wait_for() {  # wait_for <check> : poll a readiness check for up to 10 s while a server starts
    for _ in $(seq 1 100); do "$1" && return 0; sleep 0.1; done
    return 1
}

if ! redis_up && command -v redis-server >/dev/null 2>&1; then
    echo "services: starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for redis_up
fi
if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >/dev/null 2>&1
    wait_for pg_up
fi

if [ "${CI:-}" = "true" ]; then
    redis_up || { echo "services: Redis is not reachable on 127.0.0.1:6379 (CI=true)" >&2; status=1; }
    pg_up || { echo "services: PostgreSQL is not reachable on 127.0.0.1:5432 (CI=true)" >&2; status=1; }
fi
exit $status
