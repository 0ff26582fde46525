# TEM ledger build. `make` builds temd and temctl; `make test` runs every test, then the unit
# tests again under AddressSanitizer + UBSan; `make bench`, `make fuzz`, `make deps`, `make clean`.
# Generated protobuf-c code lives under $(BUILD)/gen and is never committed.

SHELL   := /bin/bash
CC      ?= gcc
BUILD   ?= build
SAN     ?=
FUZZ_SECONDS ?= 60
SEEDS   ?= 0..5999

# Debian 12 packages the build and the tests need. `make deps` installs the missing ones.
DEB_PKGS = gcc make pkg-config clang libclang-rt-14-dev protobuf-c-compiler libprotobuf-c-dev \
           libsodium-dev libsecp256k1-dev liblmdb-dev libuv1-dev check libsubunit-dev \
           libh2o-dev libssl-dev libjansson-dev libinih-dev libcurl4-openssl-dev libsystemd-dev prometheus curl jq openssl python3 python3-lmdb python3-ecdsa python3-cryptography python3-jsonschema python3-yaml iproute2 nftables docker-compose libpq-dev postgresql chromium

PKG_LIBS = libsodium libsecp256k1 lmdb libuv libprotobuf-c jansson inih libcurl libsystemd libpq
WARN     = -Wall -Wextra -Werror
OPT      = -O2 -g
ifeq ($(SAN),1)
OPT      = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
LDSAN    = -fsanitize=address,undefined
endif
CPPFLAGS = -D_GNU_SOURCE -DH2O_USE_LIBUV=1 -I. -I$(BUILD)/gen
CFLAGS   = -std=gnu17 $(WARN) $(OPT) -MMD -MP
PKG_CFLAGS := $(shell pkg-config --cflags $(PKG_LIBS) 2>/dev/null)
PKG_LDLIBS := $(shell pkg-config --libs $(PKG_LIBS) 2>/dev/null)
LDLIBS   = $(PKG_LDLIBS) -lh2o -lssl -lcrypto -lpthread -lm
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

# One static library per folder. node/ is temd's; node/ctl (temctl's verbs), node/pf (offline
# power flow) and node/sim (prosumer simulator, testnet runner, report) are temctl's. Link order
# follows the dependency order: sim -> ctl -> pf -> node -> contracts -> consensus -> net -> ledger.
MODULES  = node/sim node/ctl node/pf node contracts consensus net ledger
libname  = $(BUILD)/lib$(notdir $(1)).a
PROTO_C  = $(BUILD)/gen/proto/tem.pb-c.c
PROTO_H  = $(BUILD)/gen/proto/tem.pb-c.h

# node/temd.c and node/ctl/temctl.c hold the mains; every other .c of a folder goes into its library.
MAINS    = node/temd.c node/ctl/temctl.c
src_of   = $(filter-out $(MAINS),$(wildcard $(1)/*.c))
obj_of   = $(patsubst %.c,$(BUILD)/obj/%.o,$(call src_of,$(1)))
LIBS     = $(foreach m,$(MODULES),$(call libname,$(m))) $(BUILD)/libproto.a
TEMD_LIBS = $(foreach m,node contracts consensus net ledger,$(call libname,$(m))) $(BUILD)/libproto.a

TEMD     = $(BUILD)/temd
TEMCTL   = $(BUILD)/temctl
TEST_SRCS  = $(wildcard tests/test_*.c)
TEST_BINS  = $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
BENCH_SRCS = $(wildcard tests/bench/bench_*.c)
BENCH_BINS = $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))
SIM_SRCS   = $(wildcard tests/sim/*.c)
SIM_BIN    = $(BUILD)/tem-sim
FUZZ_SRCS  = $(wildcard tests/fuzz/fuzz_*.c)
# Scripted end-to-end tests (multi-process, CLI round trips): tests/t_*.sh, run in name order.
SH_TESTS   = $(sort $(wildcard tests/t_*.sh))

# Keep objects make would otherwise treat as intermediate and delete.
.SECONDARY:

.PHONY: all test unit-test sim-test sh-test test-asan bench fuzz deps clean soak testnet
all: $(TEMD) $(TEMCTL)

# ---------------------------------------------------------------- protobuf-c
$(PROTO_C) $(PROTO_H): proto/tem.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen proto/tem.proto
$(BUILD)/obj/gen/proto/tem.pb-c.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) -std=gnu17 $(OPT) -w -c $< -o $@
$(BUILD)/libproto.a: $(BUILD)/obj/gen/proto/tem.pb-c.o
	ar rcs $@ $^

# ---------------------------------------------------------------- modules
$(BUILD)/obj/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -c $< -o $@

define module_lib
$(call libname,$(1)): $(call obj_of,$(1))
	@mkdir -p $(BUILD)
	rm -f $$@
	ar rcs $$@ $$^
endef
$(foreach m,$(MODULES),$(eval $(call module_lib,$(m))))

# The live page (GET /ui) is node/ui/index.html, linked into libnode.a as data at build time:
# `ld -b binary` names its bounds _binary_node_ui_index_html_start/_end after the path given,
# so it runs from the source root. No hand-made copy of the page in C to drift from the file.
UI_OBJ = $(BUILD)/obj/node/ui/index_html.o
$(UI_OBJ): node/ui/index.html
	@mkdir -p $(dir $@)
	ld -r -b binary -z noexecstack -o $@ node/ui/index.html
$(call libname,node): $(UI_OBJ)

$(TEMD): $(BUILD)/obj/node/temd.o $(TEMD_LIBS)
	$(CC) $(LDSAN) -o $@ $< $(TEMD_LIBS) $(LDLIBS)
$(TEMCTL): $(BUILD)/obj/node/ctl/temctl.o $(LIBS)
	$(CC) $(LDSAN) -o $@ $< $(LIBS) $(LDLIBS)

# ---------------------------------------------------------------- tests
# A test or bench links only the modules its name says it needs, so a module under construction
# does not stop the others' tests from building: test_pbft*/host* -> consensus, test_ledger* -> ledger,
# test_cda*/call*/acct*/settle*/market*/grid*/contracts* -> contracts, test_net*/http* -> net;
# anything else links every module.
mods_for = $(strip $(if $(filter pbft% sim% host%,$(1)),consensus ledger,\
             $(if $(filter ledger% state% store% tx%,$(1)),ledger,\
             $(if $(filter grid%,$(1)),node/pf contracts ledger,\
             $(if $(filter cda% call% acct% settle% market% contracts%,$(1)),contracts ledger,\
             $(if $(filter net% http%,$(1)),net ledger,$(MODULES)))))))
libs_for = $(foreach m,$(call mods_for,$(1)),$(call libname,$(m))) $(BUILD)/libproto.a
.SECONDEXPANSION:
$(BUILD)/tests/test_%: $(BUILD)/obj/tests/test_%.o $$(call libs_for,$$*)
	@mkdir -p $(dir $@)
	$(CC) $(LDSAN) -o $@ $< $(call libs_for,$*) $(LDLIBS) $(CHECK_LIBS)
$(BUILD)/bench/bench_%: $(BUILD)/obj/tests/bench/bench_%.o $$(call libs_for,$$*)
	@mkdir -p $(dir $@)
	$(CC) $(LDSAN) -o $@ $< $(call libs_for,$*) $(LDLIBS)
$(SIM_BIN): $(patsubst %.c,$(BUILD)/obj/%.o,$(SIM_SRCS)) $(call libs_for,sim)
	$(CC) $(LDSAN) -o $@ $(filter %.o,$^) $(call libs_for,sim) $(LDLIBS)

# The Check suites share nothing (temp dirs, random ports), so they run TEST_JOBS at a time.
TEST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
unit-test: $(TEST_BINS)
	@CK_DEFAULT_TIMEOUT=600 bash tests/tools/run_par.sh $(TEST_JOBS) $(TEST_BINS)

# The range is cut into TEST_JOBS parts run side by side (the simulator is single-threaded).
# 6,000 seeds: two liveness failures lay above 5,000 (docs/consensus.md, "What is persisted").
sim-test: $(SIM_BIN)
	@s=$(SEEDS); a=$${s%%..*}; b=$${s##*..}; j=$(TEST_JOBS); step=$$(( (b - a + j) / j )); cmds=(); \
	  for ((lo = a; lo <= b; lo += step)); do hi=$$((lo + step - 1)); [ $$hi -le $$b ] || hi=$$b; \
	    cmds+=("$(SIM_BIN) --seeds $$lo..$$hi"); done; \
	  bash tests/tools/run_par.sh $$j "$${cmds[@]}"

sh-test: all $(BUILD)/tools/slow_sync.so
	@BUILD=$(BUILD) bash tests/tools/run_sh.sh $(SH_TESTS)

soak: $(SIM_BIN)
	$(SIM_BIN) --seeds $(SEEDS)

test-asan:
	$(MAKE) BUILD=build/asan SAN=1 unit-test

test: deps
	$(MAKE) unit-test
	$(MAKE) sim-test
	$(MAKE) sh-test
	$(MAKE) test-asan

# `make bench RUNS=3` runs every bench three times and ends with min/median/max per line
# (tests/bench/summary.sh); the raw lines stay in $(BUILD)/bench.log.
RUNS ?= 1
bench: deps
	$(MAKE) $(BENCH_BINS) $(TEMCTL)
	@set -eo pipefail; : > $(BUILD)/bench.log; for r in $$(seq 1 $(RUNS)); do \
	  for b in $(BENCH_BINS); do BUILD=$(BUILD) $$b | tee -a $(BUILD)/bench.log; done; done; \
	  if [ $(RUNS) -gt 1 ]; then sh tests/bench/summary.sh $(BUILD)/bench.log; fi

# ---------------------------------------------------------------- testnet
# `make testnet ARGS="--slots 8 --exit"`: a local market on 4 validators + 1 observer
# (temctl testnet run --help; docs/operate.md). The feeder comes from ../shared beside the clone
# when it is there, else from the copy in deploy/feeders.
TESTNET_FEEDER = $(firstword $(wildcard ../shared/data/feeders/case33bw) deploy/feeders/case33bw)
testnet: deps
	$(MAKE) all
	$(TEMCTL) testnet run --feeder $(TESTNET_FEEDER) --dir $(BUILD)/testnet $(ARGS)

# ---------------------------------------------------------------- fuzz (clang + libFuzzer)
FUZZ_BUILD = build/fuzz
FUZZ_CFLAGS = -std=gnu17 -g -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined $(WARN) -Wno-unused-command-line-argument -MMD -MP
FUZZ_LIB_SRCS = $(call src_of,ledger)
FUZZ_LIB_OBJS = $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_LIB_SRCS)) $(FUZZ_BUILD)/obj/proto.o
# fuzz_market runs the market executor, so it links the contracts too (added by issue 4).
$(FUZZ_BUILD)/fuzz_market: $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(call src_of,contracts))
# The peer, dispatch, HTTP and mempool-log targets drive temd's own code (issue 12): every
# module temd links, plus the embedded UI page (plain data, no sanitizer needed).
FUZZ_NODE_OBJS = $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(foreach m,node contracts consensus net,$(call src_of,$(m)))) $(UI_OBJ)
$(addprefix $(FUZZ_BUILD)/fuzz_,peer dispatch http mempool_log): $(FUZZ_NODE_OBJS)
FUZZ_BINS = $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(FUZZ_SRCS))
$(FUZZ_BINS): $(wildcard tests/fuzz/*.h) tests/ledger_fixture.h
$(FUZZ_BUILD)/obj/proto.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	clang $(CPPFLAGS) $(PKG_CFLAGS) -std=gnu17 -g -O1 -fsanitize=fuzzer-no-link,address -w -c $< -o $@
$(FUZZ_BUILD)/obj/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	clang $(CPPFLAGS) $(PKG_CFLAGS) $(FUZZ_CFLAGS) -c $< -o $@
$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJS)
	clang $(CPPFLAGS) $(PKG_CFLAGS) -std=gnu17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -o $@ $(filter-out %.h,$^) $(LDLIBS)
# CI calls `make fuzz` without -j; the fuzz objects (every module, ASan + UBSan) build in parallel.
FUZZ_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
fuzz: deps
	$(MAKE) -j$(FUZZ_JOBS) $(FUZZ_BINS)
	@set -e; cmds=(); for f in $(FUZZ_BINS); do n=$$(basename $$f); mkdir -p $(FUZZ_BUILD)/corpus/$$n; \
	  seeds=tests/fuzz/corpus/$$n; [ -d $$seeds ] || seeds=; \
	  cmds+=("$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_BUILD)/corpus/$$n $$seeds 2>&1 | \
	     grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)'; \
	     test \$${PIPESTATUS[0]} -eq 0"); done; \
	  echo "fuzz: $(FUZZ_SECONDS) s each, $(FUZZ_JOBS) at a time"; bash tests/tools/run_par.sh $(FUZZ_JOBS) "$${cmds[@]}"

# ---------------------------------------------------------------- deps
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	else echo "deps: missing packages; run as root:"; echo "  apt-get install -y$$missing"; exit 1; fi

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)

# ---------------------------------------------------------------- per-tx counter (docs/performance.md)
# An LD_PRELOAD library counting protobuf unpacks, SHA-256 calls and copies in a running temd;
# tests/count_per_tx.sh builds it and runs a 4-validator cluster under it.
$(BUILD)/tools/tem_count.so: tests/tools/tem_count.c
	@mkdir -p $(dir $@)
	$(CC) $(PKG_CFLAGS) -std=gnu17 $(WARN) -O2 -g -shared -fPIC -o $@ $< -ldl
# t_chaos.sh slows the store's commits with it (a block in flight when the power fails).
$(BUILD)/tools/slow_sync.so: tests/tools/slow_sync.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu17 $(WARN) -O2 -g -shared -fPIC -o $@ $< -ldl
# bench_per_tx runs the nodes under the counter.
$(BUILD)/bench/bench_per_tx: | $(BUILD)/tools/tem_count.so $(TEMD)
