# SPDX-License-Identifier: Apache-2.0
# regproxy build. `make` builds ./regproxy; `make test` installs what is missing, builds a
# sanitizer build and runs every test; `make run` serves the embedded default config.

CC      ?= cc
FUZZCC  ?= clang
PKGS     = libevent libevent_openssl libcurl jansson liblz4 openssl yaml-0.1
WARN     = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wformat=2 -Wvla
CFLAGS  ?= -O2 -g
CPPFLAGS += -D_GNU_SOURCE
ALLCFLAGS = -std=c11 $(WARN) $(CFLAGS) $(CPPFLAGS) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lcrypt -pthread

SANFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

ifeq ($(SANITIZE),1)
  B       = build/san
  ALLCFLAGS += $(SANFLAGS) -O1
  LDFLAGS += $(SANFLAGS)
else
  B       = build/rel
endif

MODULES  = util conf auth cache proxy
LIB_SRC  = $(filter-out proxy/main.c,$(foreach m,$(MODULES),$(wildcard $(m)/*.c)))
LIB_OBJ  = $(LIB_SRC:%.c=$(B)/%.o) $(B)/gen/default_conf.o
UNIT_SRC = $(wildcard tests/unit/*/*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(B)/tests/unit/%)
FUZZ_SRC = $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN = $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
FUZZ_TIME ?= 60
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps run test unit fuzz fuzz-replay lint format format-check check-includes banned clean bench

all: regproxy

regproxy: $(B)/regproxy
	rm -f $@ && cp $< $@

$(B)/regproxy: $(LIB_OBJ) $(B)/proxy/main.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -MMD -MP -c -o $@ $<

# The default configuration is compiled in, so `regproxy serve` works with no file at all.
$(B)/gen/default_conf.c: conf/regproxy.conf tests/tools/embed.sh
	@mkdir -p $(dir $@)
	sh tests/tools/embed.sh rp_conf_default_text_data $< > $@

$(B)/gen/default_conf.o: $(B)/gen/default_conf.c
	$(CC) $(ALLCFLAGS) -c -o $@ $<

$(B)/tests/unit/%: tests/unit/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) $(LDFLAGS) -I. -o $@ $< $(LIB_OBJ) $(LDLIBS)

# Fuzz targets share one set of objects built with the sanitizers and fuzzer coverage;
# each target links them with its LLVMFuzzerTestOneInput.
FUZZ_CFLAGS = -std=c11 -g -O1 -D_GNU_SOURCE -DRP_FUZZ -fno-sanitize-recover=all \
              $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -I.
FUZZ_OBJ = $(LIB_SRC:%.c=build/fuzz/obj/%.o) build/fuzz/obj/gen/default_conf.o

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZCC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -MMD -MP -c -o $@ $<

build/fuzz/obj/gen/default_conf.o: build/fuzz/gen/default_conf.c
	@mkdir -p $(dir $@)
	$(FUZZCC) $(FUZZ_CFLAGS) -c -o $@ $<

build/fuzz/%: tests/fuzz/%.c $(FUZZ_OBJ)
	$(FUZZCC) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_OBJ) $(LDLIBS)

build/fuzz/gen/default_conf.c: conf/regproxy.conf tests/tools/embed.sh
	@mkdir -p $(dir $@)
	sh tests/tools/embed.sh rp_conf_default_text_data $< > $@

-include $(shell find build -name '*.d' 2>/dev/null)

deps:
	@sh tests/tools/deps.sh

run: deps regproxy
	./regproxy serve

# Everything CI runs: sanitizer build of the proxy and unit tests, fuzz corpus replay,
# integration tests against real registries and clients. Closes with "N passed, N failed".
test: deps lint
	$(MAKE) -j$(JOBS) SANITIZE=1 build/san/regproxy $(UNIT_SRC:tests/unit/%.c=build/san/tests/unit/%)
	$(MAKE) -j$(JOBS) $(FUZZ_BIN)
	$(MAKE) -j$(JOBS) regproxy
	/usr/bin/python3 tests/run.py --bin build/san/regproxy --unit build/san/tests/unit \
	  --fuzz build/fuzz $(TESTS)

fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p build/fuzz/work/$$n; \
	  echo "== $$n ($(FUZZ_TIME)s)"; \
	  $$f -max_total_time=$(FUZZ_TIME) -print_final_stats=1 build/fuzz/work/$$n tests/fuzz/corpus/$$n \
	    2>&1 | grep -E 'stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY' ; done

# House rules checked by `make test`: formatting, module boundaries, banned functions.
lint: format-check check-includes banned

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

# Module boundaries (DESIGN.md): only proxy/ touches libevent and libcurl; cache/ and auth/
# know nothing of HTTP; conf/ uses nothing of ours.
check-includes:
	@! grep -nE '#include [<"](event2/|curl/)' util conf auth cache -r || \
	  { echo "check-includes: event2/ or curl/ outside proxy/"; exit 1; }
	@! grep -nE '#include "\.\./(auth|cache|proxy)/' conf -r || \
	  { echo "check-includes: conf/ may use nothing of ours"; exit 1; }
	@! grep -nE '#include "\.\./(cache|proxy)/' auth -r || \
	  { echo "check-includes: auth/ may use conf/ only"; exit 1; }
	@! grep -nE '#include "\.\./(auth|proxy)/' cache -r || \
	  { echo "check-includes: cache/ may use conf/ only"; exit 1; }
	@echo "check-includes: ok"

banned:
	@! grep -nwE '(sprintf|strcpy|strcat|atoi|gets|strtok)\s*\(' $$(git ls-files '*.c' '*.h') || \
	  { echo "banned: use the bounded alternatives"; exit 1; }
	@echo "banned: ok"

# Benchmarks (never part of `make test`): regproxy against docker-registry's proxy mode and
# nginx serving the same files; prints a Markdown table, also kept in build/bench/results.md.
# BENCH_ARGS passes options to bench/run.py (e.g. --only herd --reps 1; see --help).
bench: deps regproxy build/bench/loadgen
	sh bench/run.sh $(BENCH_ARGS)

build/bench/loadgen: bench/loadgen.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) -O2 -g $(CPPFLAGS) $(shell pkg-config --cflags libevent) -o $@ $< \
	  $(shell pkg-config --libs libevent) -lm

# Installation (GNU conventions: PREFIX, DESTDIR). `make install` builds ./regproxy if needed
# (INSTALL_BIN=path installs another binary) and installs it, the man page, the systemd unit
# (ExecStart pointing at BINDIR), the sysusers.d entry for its user, and the example
# configuration as $(SYSCONFDIR)/regproxy/regproxy.conf (mode 0640) unless one is there.
# Without DESTDIR, as root, it also creates the regproxy user and gives it the configuration.
# `make uninstall` removes what install put there except the configuration and the cache.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
SYSCONFDIR  ?= /etc
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
ifeq ($(PREFIX),/usr)
  UNITDIR   ?= /lib/systemd/system
else
  UNITDIR   ?= $(PREFIX)/lib/systemd/system
endif
INSTALL_BIN ?= regproxy

.PHONY: install uninstall

install: $(INSTALL_BIN)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(SYSUSERSDIR)
	install -m 0755 $(INSTALL_BIN) $(DESTDIR)$(BINDIR)/regproxy
	install -m 0644 docs/regproxy.1 $(DESTDIR)$(MANDIR)/man1/regproxy.1
	sed -e 's#/usr/local/bin/regproxy#$(BINDIR)/regproxy#g' \
	  -e 's#/etc/regproxy/#$(SYSCONFDIR)/regproxy/#g' dist/regproxy.service \
	  > $(DESTDIR)$(UNITDIR)/regproxy.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/regproxy.service.tmp
	mv -f $(DESTDIR)$(UNITDIR)/regproxy.service.tmp $(DESTDIR)$(UNITDIR)/regproxy.service
	install -m 0644 dist/regproxy.sysusers $(DESTDIR)$(SYSUSERSDIR)/regproxy.conf
	@conf=$(DESTDIR)$(SYSCONFDIR)/regproxy/regproxy.conf; fresh=; \
	[ -d $(DESTDIR)$(SYSCONFDIR)/regproxy ] || install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/regproxy; \
	if [ -e $$conf ]; then echo "install: keeping the existing $$conf"; \
	else echo "install -m 0640 conf/regproxy.conf $$conf"; \
	  install -m 0640 conf/regproxy.conf $$conf && fresh=1; fi; \
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
	  if ! getent passwd regproxy >/dev/null && command -v systemd-sysusers >/dev/null; then \
	    systemd-sysusers $(SYSUSERSDIR)/regproxy.conf; fi; \
	  if [ -n "$$fresh" ] && getent group regproxy >/dev/null; then chgrp regproxy $$conf; fi; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/regproxy $(DESTDIR)$(MANDIR)/man1/regproxy.1 \
	  $(DESTDIR)$(UNITDIR)/regproxy.service $(DESTDIR)$(SYSUSERSDIR)/regproxy.conf
	@echo "uninstall: kept $(DESTDIR)$(SYSCONFDIR)/regproxy/, the cache and the regproxy user"

clean:
	rm -rf build regproxy
