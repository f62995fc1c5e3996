#!/bin/sh
# ForceCommand of bench/watchers_bench.py's counting sshd: runs the command the SSH client
# asked for and logs one line per command, "<start>|<client port>|<exit code>|<base64 of the
# command>", so that connections, commands per poll cycle and failed commands are counted on
# the site for any client (batchsite or not) the same way. The log path is this script's $1.
log=$1
client_port=$(printf '%s' "$SSH_CLIENT" | cut -d' ' -f2)
start=$(date +%s.%N)
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
  # the user's login shell, as sshd itself would run the command (clients rely on bash options)
  "${SHELL:-/bin/sh}" -c "$SSH_ORIGINAL_COMMAND"
  rc=$?
else
  "${SHELL:-/bin/sh}" -l
  rc=$?
fi
printf '%s|%s|%s|%s\n' "$start" "$client_port" "$rc" \
  "$(printf '%s' "$SSH_ORIGINAL_COMMAND" | base64 -w0)" >> "$log"
exit "$rc"
