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
# No ~/.ssh/config: the VM is on this machine's loopback, and a `Host *` proxy or jump host would reach
# another machine's 127.0.0.1 (a RemoteCommand or ControlMaster there would get in the way too). Without a
# key from the boot, ssh still tries your default keys and agent.
opts=(-F /dev/null -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
if [ "$key" != "-" ]; then
  opts+=(-i "$key" -o IdentitiesOnly=yes)
fi
exec ssh "${opts[@]}" "$user@127.0.0.1" "$@"
