#!/usr/bin/env bash
# Log into an image booted with `kiln boot [--detach] BUILD_DIR` using OpenSSH.
#   hack/image-ssh.sh BUILD_DIR [CMD...]
# Reads BUILD_DIR/.boot/state.json (port, user, one-time key). Host keys are not checked or stored: every
# boot is a throwaway VM with fresh host keys on 127.0.0.1. `kiln ssh BUILD_DIR [-- CMD]` does the same
# with paramiko.
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  echo "usage: $0 BUILD_DIR [CMD...]" >&2
  exit 2
fi
build_dir=$1
shift
state="$build_dir/.boot/state.json"
if [ ! -f "$state" ]; then
  echo "image-ssh: $state: not found; boot the image first: kiln boot --detach $build_dir" >&2
  exit 2
fi
read -r port user key < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(s["ssh_port"], s["user"], s["key"] or "-")
' "$state")
# The VM is on this machine's loopback: a proxy or jump host from ~/.ssh/config (`Host *`) would reach some
# other machine's 127.0.0.1. Command-line options win over the config file.
opts=(-p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o ProxyCommand=none -o ProxyJump=none)
if [ "$key" != "-" ]; then
  opts+=(-i "$key" -o IdentitiesOnly=yes)
fi
exec ssh "${opts[@]}" "$user@127.0.0.1" "$@"
