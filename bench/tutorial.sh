#!/usr/bin/env bash
# The tutorial approach: flush a chain, then append one ACCEPT rule per range.
#   tutorial.sh IPTABLES IP6TABLES V4_URL V6_URL [PORTS]
# Creates chain CLOUDFLARE and one jump from INPUT (restricted to PORTS) if absent.
set -u
ports=${5:-80,443}
apply() {
    local ipt=$1 url=$2 range
    "$ipt" -w -N CLOUDFLARE 2>/dev/null
    "$ipt" -w -C INPUT -p tcp -m multiport --dports "$ports" -j CLOUDFLARE 2>/dev/null ||
        "$ipt" -w -I INPUT -p tcp -m multiport --dports "$ports" -j CLOUDFLARE
    "$ipt" -w -F CLOUDFLARE
    for range in $(curl -sf "$url"); do
        "$ipt" -w -A CLOUDFLARE -s "$range" -j ACCEPT
    done
}
apply "$1" "$3"
apply "$2" "$4"
