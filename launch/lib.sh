# shellcheck shell=bash
# Helpers shared by the launch scripts, which source this file (slurm.sbatch does not: it is submitted alone).
# run and has_flag read the sourcing script's dry_run and main_args.

# The sourcing script's file name, for its messages.
readonly LAUNCH_SCRIPT="${BASH_SOURCE[1]##*/}"

die_usage() {
  echo "${LAUNCH_SCRIPT}: $1" >&2
  echo "run launch/${LAUNCH_SCRIPT} --help for the options" >&2
  exit 2
}

# Shell-quotes one word so printed commands can be pasted back: bare when safe, else in double quotes when
# nothing in it is special there (readable when nested in a single-quoted remote command), else shlex-style.
quote() {
  local squote="'" special='["$`\\!]'
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  elif [[ ! "$1" =~ ${special} ]]; then
    printf '"%s"' "$1"
  else
    printf "'%s'" "${1//${squote}/${squote}\"${squote}\"${squote}}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "${word}")"
  done
  printf '%s' "${out}"
}

# dry_run is the sourcing script's.
# shellcheck disable=SC2154
run() {  # run COMMAND...: prints it as "+ COMMAND" and runs it, unless dry_run is true
  echo "+ $(quote_all "$@")"
  if [[ "${dry_run}" == false ]]; then
    "$@"
  fi
}

# main_args is the sourcing script's.
# shellcheck disable=SC2154
has_flag() {  # has_flag NAME: whether --NAME or --NAME=... is among main_args
  local word
  for word in ${main_args[@]+"${main_args[@]}"}; do
    [[ "${word}" != "--$1" && "${word}" != "--$1="* ]] || return 0
  done
  return 1
}

# Option parsing, shared by each script's `while [[ $# -gt 0 ]]` loop, which keeps its own `case`:
#   next_option "$@"    sets option and value from the first word (--opt=VALUE is split) and option_words=1
#   option_value "$@"   for an option that needs a value: takes the next word unless --opt=VALUE gave one
#   option_flag         for an option that takes no value
# and the loop ends with `shift "${option_words}"`.
# value and option_words are read by the sourcing script's loop.
# shellcheck disable=SC2034
next_option() {
  option="$1"
  value=""
  option_words=1
  option_has_value=false
  if [[ "${option}" == --*=* ]]; then
    value="${option#*=}"
    option="${option%%=*}"
    option_has_value=true
  fi
}

# shellcheck disable=SC2034
option_value() {
  if [[ "${option_has_value}" == false ]]; then
    if [[ $# -lt 2 || "$2" == --* ]]; then
      die_usage "option ${option} needs a value"
    fi
    value="$2"
    option_words=2
  fi
}

option_flag() {
  [[ "${option_has_value}" == false ]] || die_usage "option ${option} takes no value"
}
