# porter's build, test and measurement entry points. See README.md.
GO        ?= go
BIN       ?= bin
FUZZTIME  ?= 30s
# Minimizing a large new input can take the whole FUZZTIME (the broker's
# decoder sees 2 KiB packets); keep it short so the time goes to fuzzing.
FUZZMINIMIZE ?= 5s
BENCHTIME ?= 1s
# Benchmarks that `make bench` runs, side by side in one run.
BENCH     ?= .

.PHONY: all build run deps test test-nobody vet lint fuzz bench soak clean

all: build

# Without cgo: the privilege drop of porter up and porter ipcserver must
# reach every thread, which Go does only in binaries without cgo
# (internal/lockdown); a cgo build refuses to drop privileges.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/porter ./cmd/porter-creator

# The main job with built-in defaults: the broker (as root it starts the
# creator and drops to nobody). Needs no config file.
run: build
	PORTER_CREATOR=$(CURDIR)/$(BIN)/porter-creator $(BIN)/porter up

# Peer programs the tests run against (s6, lighttpd, python3, strace, gcc), from Debian.
deps:
	./scripts/install-deps

# The whole suite: peers, static checks, then every test with the race
# detector. Tests that need root or a peer program fail loudly without it.
test: deps lint
	$(GO) test -race -count=1 -timeout 20m ./...
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory test-nobody; fi

# As root, the library packages' tests again as the unprivileged user nobody,
# where the kernel's limits and checks apply (RLIMIT_NOFILE, credentials).
NOBODY_PKGS ?= ./fdpass ./creator ./broker ./ipc ./access . ./internal/sharedfd ./internal/sockpath ./internal/acceptloop ./internal/fdutil ./internal/lockdown ./bus ./cap ./internal/dbuswire
test-nobody:
	@d=$$(mktemp -d) && chmod 755 $$d && trap 'rm -rf $$d' EXIT && \
	CGO_ENABLED=0 $(GO) build -o $$d/ ./cmd/porter ./cmd/porter-creator && \
	for p in $(NOBODY_PKGS); do \
	  $(GO) test -c -race -o $$d/t.test $$p && \
	  echo "== $$p as nobody" && \
	  (cd $$p && setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/tmp PORTER_TEST_NONROOT=1 PORTER_TEST_BIN=$$d $$d/t.test -test.count=1) || exit 1; \
	done

lint: vet
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@extra=$$($(GO) list -deps ./cmd/porter-creator | grep '\.' | grep -v '^golang.org/x/sys' | grep -v "^$$($(GO) list -m)" || true); \
	  if [ -n "$$extra" ]; then echo "porter-creator links more than the standard library and x/sys:"; echo "$$extra"; exit 1; fi
	@if CGO_ENABLED=1 $(GO) list -deps ./cmd/porter-creator | grep -qx runtime/cgo; then echo "porter-creator links cgo: its lockdown needs syscall.AllThreadsSyscall"; exit 1; fi
	@if $(GO) list -deps ./cmd/porter-creator | grep -qx fmt; then echo "porter-creator links fmt: keep it small (strconv, errors)"; exit 1; fi

vet:
	$(GO) vet ./...

# Runs every fuzz target for FUZZTIME each (make fuzz FUZZTIME=5m).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) $$pkg; \
	  done; \
	done

# Zero-downtime restarts under load (make soak SOAK=5m): a Go HTTP server
# and then lighttpd, behind porter run and porter up --linger, are each
# restarted for SOAK while clients send requests; a progress line every
# 10 s, and the test fails if a single request fails. Then the fault test
# with FAULT_CLIENTS clients killed at random steps of the broker protocol
# (FAULT_SEED to vary it). The suite runs short versions of both.
SOAK          ?= 60s
SOAKTIMEOUT   ?= 2h
FAULT_CLIENTS ?= 1000
FAULT_SEED    ?= 8
soak:
	PORTER_SOAK=$(SOAK) $(GO) test -race -count=1 -timeout $(SOAKTIMEOUT) -v -run '^TestSoakRestart$$' ./cmd/porter
	PORTER_FAULT_CLIENTS=$(FAULT_CLIENTS) PORTER_FAULT_SEED=$(FAULT_SEED) $(GO) test -race -count=1 -timeout $(SOAKTIMEOUT) -v -run '^TestFaultKilledClients$$' ./cmd/porter

# Side-by-side benchmark table, one run, ratios against the raw one-fd
# round trip of this machine.
bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -count=1 ./... 2>&1 | $(GO) run ./internal/benchtable

clean:
	rm -rf $(BIN)
