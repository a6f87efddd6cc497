#!/usr/bin/env bash
# Run every check of the project, in order, and print a summary table at the end:
#   1. lint            ruff check .
#   2. unit tests      pytest tests -m "not browser and not packaging and not integration", in two
#                      processes (pytest-xdist; a test file stays in one process)
#   3. integration     whole programs in subprocesses: the CLI, multi-device and multi-process
#                      training, lab grading, the GPU benchmark at toy size, malloc counters
#   4. packaging       the wheel and the Colab install cell in fresh virtual environments
#   5. nbval chapters  the committed outputs of chapters/*.ipynb are still what the code prints
#   6. nbval labs      the same for the lab solution notebooks (labs/src/*.ipynb), when present
#   7. book build      jupyter-book build, all pages, warnings are errors
#   8. browser test    the built site in headless Chromium (tests/test_site.py)
# Every step runs even when an earlier one failed, so the summary is complete; the script exits
# non-zero if any step failed. A step that collects no tests (pytest exit 5) counts as failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# Lab notebooks that nbval re-executes (the sources with solutions, not the student versions).
LAB_NOTEBOOK_GLOB="${LAB_NOTEBOOK_GLOB:-labs/src/*.ipynb}"
NBVAL=(-m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
  -p no:cacheprovider -q)

names=()
results=()
seconds=()

run_step() {
  local name="$1"
  shift
  echo
  echo "=== ${name}: $*"
  local start end rc
  start=$(date +%s.%N)
  "$@"
  rc=$?
  end=$(date +%s.%N)
  names+=("$name")
  seconds+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')")
  if [ "$rc" -eq 0 ]; then
    results+=("pass")
  elif [ "$rc" -eq 5 ]; then
    results+=("FAIL (no tests collected)")
  else
    results+=("FAIL (exit $rc)")
  fi
}

skip_step() {
  names+=("$1")
  seconds+=("-")
  results+=("skipped ($2)")
  echo
  echo "=== $1: skipped ($2)"
}

run_step "lint (ruff)" "$PYTHON" -m ruff check .
run_step "unit tests" "$PYTHON" -m pytest tests -m "not browser and not packaging and not integration" \
  -n 2 --dist loadfile \
  -q --durations=10
run_step "integration" "$PYTHON" -m pytest tests -m integration -q --durations=10 \
  -p no:cacheprovider
run_step "packaging" "$PYTHON" -m pytest tests -m packaging -q -p no:cacheprovider
# Committed outputs are made on the CPU (scripts/execute_notebooks.py --cpu); check them there.
run_step "nbval chapters" env JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" \
  "$PYTHON" "${NBVAL[@]}" chapters/

shopt -s nullglob
# shellcheck disable=SC2206  # the glob is meant to expand here
lab_notebooks=($LAB_NOTEBOOK_GLOB)
shopt -u nullglob
if [ "${#lab_notebooks[@]}" -gt 0 ]; then
  run_step "nbval labs" env JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" \
    "$PYTHON" "${NBVAL[@]}" "${lab_notebooks[@]}"
else
  skip_step "nbval labs" "no $LAB_NOTEBOOK_GLOB yet"
fi

# --all: rebuild every page, so that warnings of unchanged pages are reported too.
run_step "book build" jupyter-book build . -W -n --keep-going --all
run_step "browser test" "$PYTHON" -m pytest tests/test_site.py -m browser -q -p no:cacheprovider

echo
echo "=== summary"
printf '%-18s %-28s %9s\n' "step" "result" "seconds"
failed=0
for i in "${!names[@]}"; do
  printf '%-18s %-28s %9s\n' "${names[$i]}" "${results[$i]}" "${seconds[$i]}"
  case "${results[$i]}" in FAIL*) failed=1 ;; esac
done
if [ "$failed" -ne 0 ]; then
  echo "some steps failed"
  exit 1
fi
echo "all steps passed"
