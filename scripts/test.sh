#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. README's test command; .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
set +e
# the suite in GT_TEST_JOBS processes (pytest-xdist; 2 = CI's cores; 0 = one process, e.g. to debug a test);
# --benchmark-disable: the tests time nothing with pytest-benchmark (it would say so under xdist in every process)
python3 -m pytest -n "${GT_TEST_JOBS:-2}" --benchmark-disable "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
