#!/bin/sh
# Entry point of the Tessera image: one participant (a connector or the consent service).
#
# Environment:
#   TESSERA_NAME        participant name (needed the first time, when the directory is created)
#   TESSERA_PORT        port to listen on (default 8000 when the participant is created)
#   TESSERA_KIND        connector | consent (default connector)
#   TESSERA_PUBLIC_URL  URL the other participants reach us at; gives the DID (default http://NAME:PORT)
#   TESSERA_HOST        interface to listen on (default 0.0.0.0 when the participant is created)
#   TESSERA_PEERS       space-separated DID document URLs of the other participants,
#                       e.g. "http://transit:8002/.well-known/did.json"
#   TESSERA_DATA_DIR    participant directory (default /data)
#   TESSERA_PEER_ATTEMPTS, TESSERA_PEER_INTERVAL
#                       how often / how many seconds apart to try each peer (default 60, 2)
#   TESSERA_NAME, _PORT, _PUBLIC_URL, _HOST and any other setting (TESSERA_DATABASE_URL,
#   TESSERA_LOG_LEVEL...) also reach the service, where they win over tessera.toml.
#
# First start: creates the participant (keys, DID, tessera.toml) in the directory. Every start:
# runs `tessera serve` (which migrates the database) and, once it answers, adds each peer to the
# trust list when its DID document answers (peers may start in any order). TERM/INT stop the
# server gracefully.
set -eu

log() {
    echo "tessera-entrypoint: $*" >&2
}

fail() {
    log "error: $*"
    exit 1
}

dir=${TESSERA_DATA_DIR:-/data}
kind=${TESSERA_KIND:-connector}
host=${TESSERA_HOST:-0.0.0.0}
port=${TESSERA_PORT:-8000}
peers=${TESSERA_PEERS:-}
attempts=${TESSERA_PEER_ATTEMPTS:-60}
interval=${TESSERA_PEER_INTERVAL:-2}

# These only steer this script. TESSERA_KIND is dropped too: tessera.toml decides what is served
# (checked below), so a changed variable cannot start a consent directory as a connector.
unset TESSERA_DATA_DIR TESSERA_KIND TESSERA_PEERS TESSERA_PEER_ATTEMPTS TESSERA_PEER_INTERVAL

case $kind in
    connector) init_command=init ;;
    consent) init_command="consent init" ;;
    *) fail "TESSERA_KIND must be 'connector' or 'consent', not '$kind'" ;;
esac
case $attempts in '' | *[!0-9]*) fail "TESSERA_PEER_ATTEMPTS must be a whole number, not '$attempts'" ;; esac
case $interval in '' | *[!0-9]*) fail "TESSERA_PEER_INTERVAL must be a whole number of seconds, not '$interval'" ;; esac

trap 'exit 143' TERM
trap 'exit 130' INT

config_value() { # KEY DEFAULT: a value from tessera.toml
    python -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get(sys.argv[2], sys.argv[3]))' \
        "$dir/tessera.toml" "$1" "$2"
}

# `tessera init` builds the directory under another name and renames it into place, which a
# volume's mount point does not allow: create it in a subdirectory and move its files up,
# tessera.toml last (a directory without tessera.toml is not a participant yet).
initialise() {
    name=${TESSERA_NAME:?TESSERA_NAME is needed to create the participant in $dir}
    public_url=${TESSERA_PUBLIC_URL:-http://$name:$port}
    mkdir -p "$dir"
    chmod 0700 "$dir" 2>/dev/null || true # best effort: it will hold the private key
    for entry in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
        [ -e "$entry" ] || continue
        case ${entry##*/} in
            .tessera-init | keys | management-api-key | lost+found) ;; # left by an interrupted start
            *) fail "$dir holds no tessera.toml but is not empty (${entry##*/}): refusing to create a participant there" ;;
        esac
    done
    stage=$dir/.tessera-init
    rm -rf "$stage" "$dir/keys" "$dir/management-api-key"
    # shellcheck disable=SC2086 # init_command is one or two words
    tessera $init_command --dir "$stage" --name "$name" --port "$port" --host "$host" \
        --public-url "$public_url" >/dev/null
    for entry in "$stage"/* "$stage"/.[!.]*; do
        [ -e "$entry" ] || continue
        [ "${entry##*/}" = tessera.toml ] || mv "$entry" "$dir/"
    done
    mv "$stage/tessera.toml" "$dir/tessera.toml"
    rmdir "$stage"
    log "created $kind '$name' ($public_url) in $dir; management API key in $dir/management-api-key"
}

if [ -f "$dir/tessera.toml" ]; then
    found=$(config_value kind connector) || fail "$dir/tessera.toml cannot be read"
    [ "$found" = "$kind" ] || fail "$dir holds a $found, but TESSERA_KIND is '$kind'"
else
    initialise
fi
own_url=${TESSERA_PUBLIC_URL:-$(config_value public_url '')}

local_port=${TESSERA_PORT:-$(config_value port 8000)}

# answers URL SECONDS [PID]: whether URL answers 2xx within SECONDS (giving up early once PID is gone).
answers() {
    python -c '
import os, sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=3).close()
        break
    except Exception:
        if time.monotonic() >= deadline:
            sys.exit(1)
        try:
            os.kill(int(sys.argv[3]), 0)
        except (IndexError, ValueError):
            pass
        except OSError:
            sys.exit(1)
        time.sleep(0.2)
' "$@" >/dev/null 2>&1
}

# Adds every peer once it answers; gives up on one after $attempts tries (the server keeps running;
# add it later with `tessera dataspace add --dir DIR --did-document URL`).
add_peers() {
    set -f # URLs are words, not patterns
    # Our own server first: it migrates the database, which `dataspace add` must not race.
    answers "http://127.0.0.1:$local_port/health" "$((attempts * interval))" "$server" ||
        log "warning: http://127.0.0.1:$local_port/health does not answer; adding peers all the same"
    pending=
    for url in $peers; do
        case $url in "${own_url%/}"/*) continue ;; esac # ourselves
        pending="$pending $url"
    done
    round=0
    while [ -n "$pending" ]; do
        kill -0 "$server" 2>/dev/null || return 0
        round=$((round + 1))
        left=
        for url in $pending; do
            result=
            if answers "$url" 0 &&
                result=$(COLUMNS=1000 tessera dataspace add --dir "$dir" --did-document "$url" 2>&1); then
                log "peer $url added: $result"
            elif [ "$round" -ge "$attempts" ]; then
                log "warning: giving up on peer $url after $attempts attempt(s)${result:+: $result}"
            else
                [ "$round" -gt 1 ] || log "peer $url not there yet: trying every $interval s, $attempts times"
                left="$left $url"
            fi
        done
        pending=$left
        [ -z "$pending" ] || sleep "$interval"
    done
}

server='' adder='' stopping=''
stop() {
    stopping=yes
    [ -z "$server" ] || kill -TERM "$server" 2>/dev/null || true
    [ -z "$adder" ] || kill -TERM "$adder" 2>/dev/null || true
}
trap stop TERM INT
tessera serve --dir "$dir" &
server=$!
[ -z "$stopping" ] || stop

if [ -n "$peers" ] && [ -z "$stopping" ]; then
    add_peers &
    adder=$!
fi

# `wait` returns early when a trapped signal arrives; wait again until the server has exited.
while :; do
    status=0
    wait "$server" || status=$?
    kill -0 "$server" 2>/dev/null || break
done
[ -z "$adder" ] || kill -TERM "$adder" 2>/dev/null || true
exit "$status"
