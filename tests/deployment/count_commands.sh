# shellcheck shell=bash
# The env_script of the headline test's connection (tests/deployment/test_headline.py). The
# site's login shell (bash) sources it before EVERY command a batchsite connection runs there:
# it sources the site's real environment, then appends one line per command to the log named
# below: "<epoch seconds>|<SSH_CLIENT: address, client port, server port>|<command, base64>".
# The same client port = the same SSH connection.
# Inputs (set below this header by shellscripts.with_values): $site_env, the site's env
# script; $command_log, the log.
: "${site_env:?the site env script}" "${command_log:?the command log}"
# shellcheck disable=SC1090 # the site's own env script, known only at run time
. "$site_env"
{
  flock 9
  printf '%s|%s|%s\n' "$(date +%s.%N)" "${SSH_CLIENT:-none}" \
    "$(printf '%s' "${BASH_EXECUTION_STRING:-}" | base64 -w0)" >&9
} 9>>"$command_log"
