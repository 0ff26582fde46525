/* test_node_config.c: temd's configuration: defaults, the INI file, flags over the file, and
 * every kind of bad input refused with a message naming the key. */
#include "node/node.h"

#include <check.h>
#include <unistd.h>

static char *write_ini(const char *text) {
    char *p = strdup("/tmp/tem-conf-XXXXXX");
    int fd = mkstemp(p);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return p;
}

START_TEST(config_file_values_and_flags_override_them) {
    node_config c;
    node_config_defaults(&c);
    ck_assert_int_eq(c.log_level, NODE_LOG_INFO);
    ck_assert_uint_eq(c.mempool_txs_max, 100000);
    ck_assert(!c.accept_observers); /* issue #12: observers only when listed */
    ck_assert_uint_eq(c.n_observer_keys, 0);
    ck_assert_uint_eq(c.http_conns_per_addr_max, 32);
    ck_assert_uint_eq(c.http_rate_reqs_per_s, 200);
    ck_assert_uint_eq(c.peer_handshakes_max, 32);
    ck_assert_uint_eq(c.tail_check_blocks, 64);
    {
        node_config o;
        node_config_defaults(&o);
        char e[256];
        char *av[] = {"temd", "--observer-key", "8d18fc5ae5a5889006079233e91302c3b26b208d470f0e1875bdd8a67ec643a2",
                      "--observer-key", "00000000000000000000000000000000000000000000000000000000000000ff",
                      "--http-conns-per-addr-max", "8", "--mempool-log-reset", NULL};
        ck_assert_int_eq(node_config_flags(&o, 8, av, e, sizeof e), NODE_OK);
        ck_assert_uint_eq(o.n_observer_keys, 2);
        ck_assert_uint_eq(o.observer_keys[0][0], 0x8d);
        ck_assert_uint_eq(o.observer_keys[1][31], 0xff);
        ck_assert_uint_eq(o.http_conns_per_addr_max, 8);
        ck_assert(o.mempool_log_reset);
        char *bad1[] = {"temd", "--observer-key", "abcd", NULL};
        ck_assert_int_eq(node_config_flags(&o, 3, bad1, e, sizeof e), NODE_ECONFIG);
        char *bad2[] = {"temd", "--http-conns-per-addr-max", "0", NULL};
        ck_assert_int_eq(node_config_flags(&o, 3, bad2, e, sizeof e), NODE_ECONFIG);
        char *tc[] = {"temd", "--tail-check-blocks", "0", NULL}; /* 0 turns the start-up check off */
        ck_assert_int_eq(node_config_flags(&o, 3, tc, e, sizeof e), NODE_OK);
        ck_assert_uint_eq(o.tail_check_blocks, 0);
        char *bad3[] = {"temd", "--tail-check-blocks", "-1", NULL};
        ck_assert_int_eq(node_config_flags(&o, 3, bad3, e, sizeof e), NODE_ECONFIG);
    }
    char *p = write_ini("[node]\ndata_dir = /var/lib/tem\ngenesis = /etc/tem/g.json\nkey = /etc/tem/v.key\n"
                        "listen = 0.0.0.0:26600\nhttp = 127.0.0.1:8080\nlog_level = debug\n"
                        "mempool_txs_max = 5000\nobserver = false\nblock_interval_ms = 250\n");
    char err[256];
    ck_assert_int_eq(node_config_load(&c, p, err, sizeof err), NODE_OK);
    ck_assert_str_eq(c.data_dir, "/var/lib/tem");
    ck_assert_str_eq(c.listen, "0.0.0.0:26600");
    ck_assert_int_eq(c.log_level, NODE_LOG_DEBUG);
    ck_assert_uint_eq(c.mempool_txs_max, 5000);
    ck_assert_uint_eq(c.block_interval_ms, 250);
    char *argv[] = {"temd", "--config", p, "--data-dir", "/tmp/other", "--observer", "--log-level=warn",
                    "--http", "127.0.0.1:9090", NULL};
    ck_assert_int_eq(node_config_flags(&c, 9, argv, err, sizeof err), NODE_OK);
    ck_assert_str_eq(c.data_dir, "/tmp/other");
    ck_assert(c.observer);
    ck_assert_int_eq(c.log_level, NODE_LOG_WARN);
    ck_assert_str_eq(c.http, "127.0.0.1:9090");
    ck_assert_str_eq(c.genesis, "/etc/tem/g.json"); /* from the file, not overridden */
    unlink(p);
    free(p);
}
END_TEST

START_TEST(config_bad_input_is_refused_with_the_key_named) {
    static const struct {
        const char *name, *ini, *want;
    } rows[] = {
        {"unknown key", "[node]\nfrobnicate = 1\n", "frobnicate"},
        {"unknown section", "[peer]\nlisten = x\n", "[peer]"},
        {"bad level", "[node]\nlog_level = loud\n", "log_level"},
        {"bad number", "[node]\nmempool_txs_max = lots\n", "mempool_txs_max"},
        {"zero pool", "[node]\nmempool_txs_max = 0\n", "mempool_txs_max"},
        {"negative", "[node]\nbatch_delay_ms = -5\n", "batch_delay_ms"},
        {"bad bool", "[node]\nobserver = maybe\n", "observer"},
        {"syntax", "[node\nx\n", "line"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        node_config c;
        node_config_defaults(&c);
        char *p = write_ini(rows[i].ini), err[256] = "";
        ck_assert_msg(node_config_load(&c, p, err, sizeof err) == NODE_ECONFIG, "row %s", rows[i].name);
        ck_assert_msg(strstr(err, rows[i].want) != NULL, "row %s: '%s'", rows[i].name, err);
        unlink(p);
        free(p);
    }
    node_config c;
    node_config_defaults(&c);
    char err[256];
    ck_assert_int_eq(node_config_load(&c, "/nonexistent/temd.conf", err, sizeof err), NODE_ECONFIG);
    char *a1[] = {"temd", "--no-such-flag", "1", NULL};
    ck_assert_int_eq(node_config_flags(&c, 3, a1, err, sizeof err), NODE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err, "no-such-flag"));
    char *a2[] = {"temd", "--data-dir", NULL};
    ck_assert_int_eq(node_config_flags(&c, 2, a2, err, sizeof err), NODE_ECONFIG);
    char *a3[] = {"temd", "stray", NULL};
    ck_assert_int_eq(node_config_flags(&c, 2, a3, err, sizeof err), NODE_ECONFIG);
}
END_TEST

/* [sync] (docs/operate.md, "Joining by state sync"): defaults, the section, flags, bad values. */
START_TEST(config_sync_section_and_flags) {
    node_config c;
    node_config_defaults(&c);
    ck_assert(!c.sync_enable);
    ck_assert_uint_eq(c.sync_snapshot_interval, 1000);
    ck_assert_uint_eq(c.sync_chunk_timeout_ms, 5000);
    ck_assert_uint_eq(c.sync_peer_inflight_max, 4);
    ck_assert_uint_eq(c.sync_serve_chunks_per_s, 20);
    char *p = write_ini("[node]\nobserver = true\n[sync]\nenable = true\nsnapshot_interval = 0\ntrust_height = 70\n"
                        "trust_hash = 00000000000000000000000000000000000000000000000000000000000000ab\n"
                        "chunk_delay_ms = 150\n");
    char err[256];
    ck_assert_int_eq(node_config_load(&c, p, err, sizeof err), NODE_OK);
    ck_assert(c.sync_enable && c.sync_trust_hash_set);
    ck_assert_uint_eq(c.sync_snapshot_interval, 0);
    ck_assert_uint_eq(c.sync_trust_height, 70);
    ck_assert_uint_eq(c.sync_trust_hash[31], 0xab);
    ck_assert_uint_eq(c.sync_chunk_delay_ms, 150);
    unlink(p);
    free(p);
    node_config f;
    node_config_defaults(&f);
    char *av[] = {"temd", "--state-sync", "--sync-peer-inflight-max", "8", "--sync-serve-chunks-per-s", "5", NULL};
    ck_assert_int_eq(node_config_flags(&f, 6, av, err, sizeof err), NODE_OK);
    ck_assert(f.sync_enable);
    ck_assert_uint_eq(f.sync_peer_inflight_max, 8);
    ck_assert_uint_eq(f.sync_serve_chunks_per_s, 5);
    static const char *const bad[] = {"[sync]\npeer_inflight_max = 0\n", "[sync]\npeer_inflight_max = 65\n",
                                      "[sync]\nchunk_timeout_ms = 0\n", "[sync]\ntrust_hash = abcd\n",
                                      "[sync]\nenable = perhaps\n", "[sync]\nserve_chunks_per_s = 0\n",
                                      "[sync]\nfrobnicate = 1\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        node_config b;
        node_config_defaults(&b);
        char *q = write_ini(bad[i]);
        ck_assert_msg(node_config_load(&b, q, err, sizeof err) == NODE_ECONFIG, "accepted: %s", bad[i]);
        ck_assert_msg(strstr(err, "sync_") != NULL, "'%s' does not name the key", err);
        unlink(q);
        free(q);
    }
}
END_TEST

START_TEST(config_relative_paths_are_taken_from_the_file_folder) {
    char d[] = "/tmp/tem-confdir-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(d));
    char p[128];
    snprintf(p, sizeof p, "%s/temd.conf", d);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs("[node]\ndata_dir = data\ngenesis = ../g.json\nkey = /abs/v.key\ntls_cert = c.pem\nlog_format = json\n", f);
    ck_assert_int_eq(fclose(f), 0);
    node_config c;
    node_config_defaults(&c);
    char err[256], want[160];
    ck_assert_int_eq(node_config_load(&c, p, err, sizeof err), NODE_OK);
    snprintf(want, sizeof want, "%s/data", d);
    ck_assert_str_eq(c.data_dir, want);
    snprintf(want, sizeof want, "%s/../g.json", d);
    ck_assert_str_eq(c.genesis, want);
    ck_assert_str_eq(c.key, "/abs/v.key");
    snprintf(want, sizeof want, "%s/c.pem", d);
    ck_assert_str_eq(c.tls_cert, want);
    ck_assert_str_eq(c.tls_key, ""); /* not set: stays empty */
    ck_assert_int_eq(c.log_format, NODE_LOG_JSON);
    ck_assert_str_eq(c.config, p);
    /* Flags keep the current directory. */
    char *argv[] = {"temd", "--data-dir", "rel", NULL};
    ck_assert_int_eq(node_config_flags(&c, 3, argv, err, sizeof err), NODE_OK);
    ck_assert_str_eq(c.data_dir, "rel");
    /* A value other than text|json is refused. */
    f = fopen(p, "w");
    fputs("[node]\nlog_format = xml\n", f);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(node_config_load(&c, p, err, sizeof err), NODE_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err, "log_format"));
    unlink(p);
    rmdir(d);
}
END_TEST

int main(void) {
    Suite *s = suite_create("node_config");
    TCase *t = tcase_create("config");
    tcase_add_test(t, config_file_values_and_flags_override_them);
    tcase_add_test(t, config_bad_input_is_refused_with_the_key_named);
    tcase_add_test(t, config_sync_section_and_flags);
    tcase_add_test(t, config_relative_paths_are_taken_from_the_file_folder);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
