#!/usr/bin/env bash
# One entry point for a fresh machine: installs into .venv on first use (and when pyproject.toml
# changes), then runs what was asked.
#   bash dev.sh demo    the main job: discover a circuit of the trained `sequences` reference model
#                       for `digits`, stored in the embedded SQLite database, in-process worker
#   bash dev.sh test    the quick tier: unit tests not marked slow or integration (tests/conftest.py)
#   bash dev.sh test-all  every test: unit, slow, and integration against PostgreSQL/Redis on localhost (CI)
#   bash dev.sh lint    ruff (lint and format check) and mypy
#   bash dev.sh bench   every benchmark in bench/, one JSON line each
#   bash dev.sh docs    the API reference (pdoc, from the docstrings) into docs/api (open docs/api/index.html)
set -euo pipefail
cd "$(dirname "$0")"

setup() {
    local stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
    if [ ! -f "$stamp" ]; then
        [ -x .venv/bin/python ] || python3 -m venv .venv
        .venv/bin/pip install -q --upgrade pip
        # torch first and pinned: pip takes the local CPU build; anything else pulls GBs of CUDA
        .venv/bin/pip install -q torch==2.13.0
        .venv/bin/pip install -q -e ".[test]"
        rm -f .venv/.installed-*
        touch "$stamp"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    setup) setup ;;
    # done-in (Lan & Barez) ends in "... Sun done in": the answer needs attention to the last number;
    # with the plain template the answer is the successor of the current token and MLPs alone give it
    demo) setup; exec .venv/bin/circuits submit --model ref:sequences --task digits --task-param template=done-in --method greedy --target 0.9 "$@" ;;
    test) setup; exec .venv/bin/python -m pytest -q -ra -m "not slow and not integration" "$@" ;;
    test-all) setup; exec .venv/bin/python -m pytest -q -ra "$@" ;;
    lint) setup; .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy ;;
    # the public modules by name: the package's __all__ lists the API functions, which hides its submodules from pdoc
    docs) setup; exec .venv/bin/pdoc --docformat restructuredtext -o "${1:-docs/api}" discovery discovery.api \
        discovery.types discovery.model discovery.engine discovery.scoring discovery.tasks discovery.search \
        discovery.analysis discovery.pictures discovery.formats discovery.store discovery.service ;;
    bench) setup; for b in bench/[!_]*.py; do echo "# $b" >&2; .venv/bin/python "$b"; done ;;
    *) echo "usage: bash dev.sh demo|test|test-all|lint|bench|docs|setup [args]" >&2; exit 2 ;;
esac
