#!/bin/sh
# run_helper.sh: `bs_run <command...>`, one scheduler command per status section
# (batchsite.backends.common.RUN_HELPER; common.parse_run_section reads what it prints).
#
# The command's stdout is streamed through (never held in memory or in a temp file:
# condor_q -json of a big DAG is megabytes) and always ends with a newline; then its
# stderr as `!err <line>` lines and `!rc <exit code>`. Sets $bs_rc and $bs_err and returns
# the command's exit code. No temp files: stderr and the exit code travel through fd 4
# into a variable, the stream goes to fd 3 (the script's stdout). POSIX sh + awk.
#
# Status scripts are this text followed by their bs_run calls; run alone, the arguments
# are one command: `sh run_helper.sh squeue --version`.
exec 3>&1
bs_nl='
'
bs_run() {
  bs_out=$( { { "$@" 2>&4 3>&- 4>&-; printf '\n%s\n' "$?" >&4; } | awk '{ print }' >&3 3>&- 4>&-; } 4>&1 )
  bs_rc=${bs_out##*"$bs_nl"}
  bs_err=${bs_out%"$bs_rc"}
  while :; do case $bs_err in *"$bs_nl") bs_err=${bs_err%"$bs_nl"} ;; *) break ;; esac; done
  [ -n "$bs_err" ] && printf '%s\n' "$bs_err" | sed 's/^/!err /'
  echo "!rc $bs_rc"
  return "$bs_rc"
}

if [ $# -gt 0 ]; then bs_run "$@"; fi
