/* testnet_run.c: `temctl testnet`: a local energy market on loopback. `gen` writes the keys, the
 * genesis (4 validators, a DSO, a utility and N prosumers placed on the feeder's buses), the
 * signed feeder install tx and the node configs; `run` also starts 4 temd validators and one
 * observer, installs the feeder, runs the prosumer simulator in real time, waits for settlement,
 * reads back what the chain did and reports it (summary on stdout, testnet-report.html, and the
 * dataset testnet-data.json the report is drawn from); `report` redraws a dataset.
 *
 * Every process it starts is recorded by pid and stopped with SIGTERM (then SIGKILL after 10 s)
 * on exit, on error and on SIGINT/SIGTERM. */
#include "node/sim/testnet.h"
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <sodium.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TN_VALIDATORS 4
#define TN_NODES (TN_VALIDATORS + 1) /* + the observer */
#define TN_MARKER ".tem-testnet"
#define TN_MONEY_PROSUMER 100000000000ll   /* 100,000 units each */
#define TN_MONEY_UTILITY 10000000000000ll  /* the retailer of last resort pays feed-in */
#define TN_RETAIL 300000
#define TN_FEED_IN 80000
#define TN_NETWORK_FEE 1000 /* uunit per kWh per ohm of path resistance */
#define TN_METER_LEAD_MS 8000 /* time the nodes get to start before the meters' first slot */

typedef struct {
    /* options */
    uint32_t prosumers, slots, slot_seconds, base_port;
    uint64_t seed;
    double power_scale;
    int mechanism;
    bool exit_after, quiet;
    char dir[4096], feeder[4096], temd[4096], report[4096];
    char hosts[TN_NODES][64]; /* --hosts: one address per node, same ports on each; else loopback */
    bool have_hosts;
    /* generated */
    ledger_genesis g;
    bool have_g;
    ctl_feeder f;
    ctl_feeder_base bc; /* the per-slot base case the DSO publishes (base-case.csv) */
    uint8_t dso_sec[32], dso_pub[33], util_sec[32], util_pub[33];
    uint8_t (*psec)[32], (*ppub)[33];
    uint8_t (*msec)[32], (*mpub)[33]; /* each prosumer's meter key: it signs the readings */
    uint64_t meter_from;              /* first slot the genesis meters answer for */
    bool run_slots_only;              /* run: the meters answer for the simulated slots only */
    uint32_t *bus, *per_bus;
    double *bus_load_w;
    /* running */
    pid_t pid[TN_NODES];
    ctl_http_conn conn[TN_NODES];
} tn;

static volatile sig_atomic_t tn_stop;
static void tn_on_signal(int sig) {
    (void)sig;
    tn_stop = 1;
}

static void say(const tn *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const tn *t, const char *fmt, ...) {
    if (t->quiet) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("testnet: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void tn_free(tn *t) {
    if (t->have_g) ledger_genesis_free(&t->g);
    ctl_feeder_free(&t->f);
    ctl_feeder_base_free(&t->bc);
    if (t->psec) sodium_memzero(t->psec, sizeof(*t->psec) * t->prosumers);
    if (t->msec) sodium_memzero(t->msec, sizeof(*t->msec) * t->prosumers);
    tem_free(t->msec);
    tem_free(t->mpub);
    sodium_memzero(t->dso_sec, 32);
    sodium_memzero(t->util_sec, 32);
    tem_free(t->psec);
    tem_free(t->ppub);
    tem_free(t->bus);
    tem_free(t->per_bus);
    tem_free(t->bus_load_w);
    for (int i = 0; i < TN_NODES; i++) ctl_http_close(&t->conn[i]);
}

/* ------------------------------------------------------------------ files */
static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    if (ftw->level == 0) return 0;
    return remove(path);
}

/* A testnet dir is emptied only when it carries our marker: never wipe a folder we did not make. */
static int prepare_dir(const char *dir) {
    char marker[4200];
    snprintf(marker, sizeof marker, "%s/%s", dir, TN_MARKER);
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            fprintf(stderr, "testnet: %s is not a directory\n", dir);
            return -1;
        }
        if (access(marker, F_OK) != 0) {
            DIR *d = opendir(dir);
            struct dirent *e;
            int n = 0;
            while (d && (e = readdir(d))) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
            if (d) closedir(d);
            if (n > 0) {
                fprintf(stderr, "testnet: %s is not empty and not a testnet dir (no %s); refusing to "
                                "wipe it\n", dir, TN_MARKER);
                return -1;
            }
        } else if (nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
            fprintf(stderr, "testnet: cannot empty %s: %s\n", dir, strerror(errno));
            return -1;
        }
    } else if (mkdir(dir, 0700) != 0) {
        fprintf(stderr, "testnet: cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/keys", dir);
    if (mkdir(sub, 0700) != 0 && errno != EEXIST) return -1;
    return ctl_write_file(marker, "temctl testnet\n", 15);
}

static int new_meter_key(const char *path, uint8_t sec[32], uint8_t pub[33]) {
    ledger_keyfile k = {0};
    int rc = ledger_secp_keygen(k.secp_sec, k.secp_pub);
    if (rc == LEDGER_OK) rc = ledger_keyfile_write(path, &k);
    if (rc == LEDGER_OK) {
        memcpy(sec, k.secp_sec, 32);
        memcpy(pub, k.secp_pub, 33);
    }
    sodium_memzero(&k, sizeof k);
    if (rc != LEDGER_OK) fprintf(stderr, "testnet: cannot write key %s\n", path);
    return rc == LEDGER_OK ? 0 : -1;
}

static int new_validator_key(const char *path) {
    ledger_keyfile k = {.is_validator = 1};
    int rc = ledger_ed_keygen(k.ed_sec, k.ed_pub);
    if (rc == LEDGER_OK) rc = ledger_keyfile_write(path, &k);
    sodium_memzero(&k, sizeof k);
    if (rc != LEDGER_OK) fprintf(stderr, "testnet: cannot write key %s\n", path);
    return rc == LEDGER_OK ? 0 : -1;
}

/* On loopback every node gets its own ports; with --hosts (containers, network namespaces)
 * every node has its own address and they all use the base ports. */
static uint32_t peer_port(const tn *t, int i) { return t->base_port + (t->have_hosts ? 0 : (uint32_t)i); }
static uint32_t http_port(const tn *t, int i) { return t->base_port + 100 + (t->have_hosts ? 0 : (uint32_t)i); }
static void node_addr(const tn *t, char *out, size_t n, int i, uint32_t port) {
    snprintf(out, n, "%s:%u", t->have_hosts ? t->hosts[i] : "127.0.0.1", port);
}
/* What a node binds: its own address on loopback, every interface when it has a host of its
 * own (a container's name is not an address it can bind). */
static void listen_addr(const tn *t, char *out, size_t n, uint32_t port) {
    snprintf(out, n, "%s:%u", t->have_hosts ? "0.0.0.0" : "127.0.0.1", port);
}
static void addr(char *out, size_t n, uint32_t port) { snprintf(out, n, "127.0.0.1:%u", port); }

/* ------------------------------------------------------------------ gen */
/* The DSO's expected base case, as temctl's --base-case CSV in DIR/base-case.csv (so
 * `temctl feeder flow DIR --base-case FILE --slot S` reproduces any slot), then loaded into
 * t->bc. A daily profile of 1440 / slot_minutes entries: loads follow the simulator's residential
 * and commercial shapes averaged (peak 100 % = the feeder files' loads, at 19:00), and every bus
 * has rooftop PV of the feeder's other customers, installed at its peak load, at the clear-sky
 * output (midday net export: reverse flow). Slot s uses entry s mod N (docs/grid.md), so the
 * entries are rotated to put the run's first slot (meter_from) at the simulator's start minute. */
static int write_base_case(tn *t, char *path, size_t pathlen) {
    ctl_sim_config sc;
    ctl_sim_config_default(&sc);
    const uint32_t n = CTL_SIM_DAY_MINUTES / sc.slot_minutes, start = ctl_sim_start_minute(t->slots, sc.slot_minutes);
    snprintf(path, pathlen, "%s/base-case.csv", t->dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "testnet: cannot write %s\n", path);
        return -1;
    }
    fprintf(f, "# testnet base case: entry e is simulated minute %u + ((e - %llu) mod %u) x %u\n", start,
            (unsigned long long)t->meter_from, n, sc.slot_minutes);
    for (uint32_t e = 0; e < n; e++) {
        uint64_t k = ((uint64_t)e + n - t->meter_from % n) % n;
        double m = start + (double)k * sc.slot_minutes;
        double load = 50.0 * (ctl_sim_load_shape(0, m) + ctl_sim_load_shape(1, m));
        fprintf(f, "profile,%u,%.3f,%.3f\n", e, load, 100.0 * ctl_sim_clear_sky(&sc, m));
    }
    for (uint32_t b = 0; b < t->f.n_buses; b++)
        if (t->f.buses[b].pd_kw > 0) fprintf(f, "gen,%u,%.3f\n", t->f.buses[b].id, t->f.buses[b].pd_kw);
    if (fclose(f) != 0) {
        fprintf(stderr, "testnet: cannot write %s\n", path);
        return -1;
    }
    char err[CTL_FEEDER_ERR_BYTES];
    if (ctl_feeder_base_load(&t->f, path, &t->bc, err, sizeof err) != 0) {
        fprintf(stderr, "testnet: base case: %s\n", err);
        return -1;
    }
    return 0;
}

static int gen(tn *t) {
    char path[4400], err[CTL_FEEDER_ERR_BYTES];
    if (prepare_dir(t->dir) != 0) return -1;
    if (ctl_feeder_load(&t->f, t->feeder, err, sizeof err) != 0) {
        fprintf(stderr, "testnet: feeder %s: %s\n", t->feeder, err);
        return -1;
    }
    uint32_t n = t->prosumers;
    t->psec = tem_calloc(n, sizeof *t->psec);
    t->ppub = tem_calloc(n, sizeof *t->ppub);
    t->msec = tem_calloc(n, sizeof *t->msec);
    t->mpub = tem_calloc(n, sizeof *t->mpub);
    t->bus = tem_calloc(n, sizeof *t->bus);
    t->per_bus = tem_calloc(n, sizeof *t->per_bus);
    t->bus_load_w = tem_calloc(n, sizeof *t->bus_load_w);
    if (!t->psec || !t->ppub || !t->msec || !t->mpub || !t->bus || !t->per_bus || !t->bus_load_w) return -1;
    if (ctl_sim_place(&t->f, n, t->bus, t->bus_load_w, t->per_bus) != 0) {
        fprintf(stderr, "testnet: feeder %s has no bus to place prosumers on\n", t->feeder);
        return -1;
    }
    json_t *spec = json_object(), *vals = json_array(), *admins = json_array(), *parts = json_array();
    json_object_set_new(spec, "chain_id", json_string("tem-testnet"));
    /* Slots count from here; whole seconds keep the slot boundaries readable in logs. */
    int64_t gt = ctl_now_ms() / 1000 * 1000;
    json_object_set_new(spec, "genesis_time_ms", json_integer(gt));
    json_object_set_new(spec, "validators", vals);
    json_object_set_new(spec, "admins", admins);
    json_object_set_new(spec, "participants", parts);
    for (int i = 0; i < TN_VALIDATORS; i++) {
        char name[16], a[64], h[64];
        snprintf(name, sizeof name, "v%d", i);
        snprintf(path, sizeof path, "%s/keys/v%d.key", t->dir, i);
        if (new_validator_key(path) != 0) goto fail;
        node_addr(t, a, sizeof a, i, peer_port(t, i));
        node_addr(t, h, sizeof h, i, http_port(t, i));
        json_t *v = json_object();
        json_object_set_new(v, "name", json_string(name));
        json_object_set_new(v, "key_file", json_string(path));
        json_object_set_new(v, "address", json_string(a));
        json_object_set_new(v, "http", json_string(h));
        json_array_append_new(vals, v);
    }
    snprintf(path, sizeof path, "%s/keys/observer.key", t->dir);
    if (new_validator_key(path) != 0) goto fail;
    snprintf(path, sizeof path, "%s/keys/dso.key", t->dir);
    if (new_meter_key(path, t->dso_sec, t->dso_pub) != 0) goto fail;
    json_array_append_new(admins, json_string(path));
    snprintf(path, sizeof path, "%s/keys/utility.key", t->dir);
    if (new_meter_key(path, t->util_sec, t->util_pub) != 0) goto fail;
    json_array_append_new(admins, json_string(path));
    uint32_t slack_id = t->f.buses[t->f.slack].id;
    json_t *e = json_object();
    json_object_set_new(e, "key_file", json_string(path));
    json_object_set_new(e, "bus", json_integer(slack_id));
    json_object_set_new(e, "role", json_string("utility"));
    json_object_set_new(e, "money_uunit", json_integer(TN_MONEY_UTILITY));
    json_array_append_new(parts, e);
    snprintf(path, sizeof path, "%s/keys/dso.key", t->dir);
    e = json_object();
    json_object_set_new(e, "key_file", json_string(path));
    json_object_set_new(e, "bus", json_integer(slack_id));
    json_object_set_new(e, "role", json_string("dso"));
    json_object_set_new(e, "money_uunit", json_integer(0));
    json_array_append_new(parts, e);
    ctl_sim_config sc;
    ctl_sim_config_default(&sc);
    sc.seed = t->seed;
    if (t->power_scale > 0) sc.power_scale = t->power_scale;
    /* The meters answer for the run's slots only, from the first one the simulator can still
     * order for once the nodes have had TN_METER_LEAD_MS to start (docs/sim.md): a slot nobody
     * simulates would be settled as a silent meter, at its import capacity. */
    {
        int64_t slot_ms = (int64_t)t->slot_seconds * 1000;
        int64_t rel = ctl_now_ms() + TN_METER_LEAD_MS + 3 * slot_ms - gt;
        t->meter_from = rel <= 0 ? 0 : (uint64_t)((rel + slot_ms - 1) / slot_ms);
    }
    for (uint32_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/keys/p%03u.key", t->dir, i);
        if (new_meter_key(path, t->psec[i], t->ppub[i]) != 0) goto fail;
        ctl_sim_prosumer p;
        ctl_sim_prosumer_init(&p, &sc, i, t->bus[i], t->bus_load_w[i], t->per_bus[i]);
        e = json_object();
        json_object_set_new(e, "key_file", json_string(path));
        json_object_set_new(e, "bus", json_integer(t->bus[i]));
        json_object_set_new(e, "role", json_string(p.cls == CTL_SIM_CONSUMER ? "consumer" : "prosumer"));
        json_object_set_new(e, "money_uunit", json_integer(TN_MONEY_PROSUMER));
        json_array_append_new(parts, e);
        /* Its meter, registered by the genesis with capacities the simulation never reaches. */
        snprintf(path, sizeof path, "%s/keys/m%03u.key", t->dir, i);
        if (new_meter_key(path, t->msec[i], t->mpub[i]) != 0) goto fail;
        int64_t iw, ew;
        ctl_sim_meter_caps(&p, &iw, &ew);
        e = json_object();
        json_object_set_new(e, "key_file", json_string(path));
        json_object_set_new(e, "bus", json_integer(t->bus[i]));
        json_object_set_new(e, "role", json_string("meter"));
        json_object_set_new(e, "owner", ctl_json_hex(t->ppub[i], 33));
        json_object_set_new(e, "import_capacity_w", json_integer(iw));
        json_object_set_new(e, "export_capacity_w", json_integer(ew));
        json_object_set_new(e, "from_slot", json_integer((json_int_t)t->meter_from));
        /* `testnet run` knows its slots; after `testnet gen` the meters stay (whoever runs the
         * simulator later must keep them reporting: silence is estimated). */
        if (t->run_slots_only)
            json_object_set_new(e, "until_slot", json_integer((json_int_t)(t->meter_from + t->slots)));
        json_array_append_new(parts, e);
    }
    json_t *tar = json_array(), *p0 = json_object();
    json_object_set_new(p0, "start_minute", json_integer(0));
    json_object_set_new(p0, "retail_uunit_per_kwh", json_integer(TN_RETAIL));
    json_object_set_new(p0, "feed_in_uunit_per_kwh", json_integer(TN_FEED_IN));
    json_array_append_new(tar, p0);
    json_object_set_new(spec, "tariffs", tar);
    int64_t slot_ms = (int64_t)t->slot_seconds * 1000;
    json_t *m = json_object();
    json_object_set_new(m, "slot_ms", json_integer(slot_ms));
    json_object_set_new(m, "gate_closure_ms", json_integer(slot_ms));
    json_object_set_new(m, "settlement_deadline_ms", json_integer(4 * slot_ms));
    json_object_set_new(m, "mechanism", json_string(t->mechanism == LEDGER_MECH_CALL ? "call" : "cda"));
    json_object_set_new(m, "network_fee_uunit_per_kwh_per_ohm", json_integer(TN_NETWORK_FEE));
    json_object_set_new(spec, "market", m);
    char spec_path[4400], gen_path[4400];
    snprintf(spec_path, sizeof spec_path, "%s/genesis-spec.json", t->dir);
    snprintf(gen_path, sizeof gen_path, "%s/genesis.json", t->dir);
    if (json_dump_file(spec, spec_path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) goto fail;
    json_decref(spec);
    spec = NULL;
    /* The genesis goes through temctl genesis itself, so it is checked by the node's parser. */
    char *gargv[] = {"genesis", "--spec", spec_path, "--out", gen_path, NULL};
    if (ctl_genesis_main(5, gargv) != CTL_OK) return -1;
    char gerr[256];
    if (ledger_genesis_load(gen_path, &t->g, gerr, sizeof gerr) != LEDGER_OK) {
        fprintf(stderr, "testnet: %s\n", gerr);
        return -1;
    }
    t->have_g = true;

    /* The DSO's first tx installs the feeder model the grid check uses, with its base case. */
    if (write_base_case(t, path, sizeof path) != 0) return -1;
    ctl_feeder_install inst = {0};
    if (ctl_feeder_install_build(&t->f, CTL_FEEDER_MARGIN_PPM_DEFAULT, &inst, err, sizeof err) != 0) {
        fprintf(stderr, "testnet: feeder install: %s\n", err);
        return -1;
    }
    if (ctl_feeder_install_set_base(&inst, &t->f, &t->bc) != 0) {
        ctl_feeder_install_free(&inst);
        return -1;
    }
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    body.chain_id = t->g.chain_id;
    body.nonce = 0;
    body.kind_case = TEM__V1__TX_BODY__KIND_INSTALL_FEEDER;
    body.install_feeder = &inst.msg;
    uint8_t *tx = NULL;
    size_t txlen = 0;
    int rc = ledger_tx_build(&body, t->dso_sec, &tx, &txlen, NULL);
    ctl_feeder_install_free(&inst);
    if (rc != LEDGER_OK) return -1;
    snprintf(path, sizeof path, "%s/feeder-install.tx", t->dir);
    rc = ctl_write_file(path, tx, txlen);
    tem_free(tx);
    if (rc != 0) return -1;

    /* Validators admit only listed observers (docs/operate.md): list the testnet's one. */
    char obs_pub[65] = "";
    {
        char kp[4400];
        snprintf(kp, sizeof kp, "%s/keys/observer.key", t->dir);
        json_error_t je;
        json_t *kj = json_load_file(kp, 0, &je);
        const char *pubhex = kj ? json_string_value(json_object_get(kj, "public")) : NULL;
        if (pubhex && strlen(pubhex) == 64) snprintf(obs_pub, sizeof obs_pub, "%s", pubhex);
        json_decref(kj);
        if (!obs_pub[0]) return -1;
    }
    for (int i = 0; i < TN_NODES; i++) {
        bool obs = i == TN_VALIDATORS;
        char conf[4400], text[8192], a[64], h[64];
        snprintf(conf, sizeof conf, "%s/node%d.conf", t->dir, i);
        listen_addr(t, a, sizeof a, peer_port(t, i));
        listen_addr(t, h, sizeof h, http_port(t, i));
        char key[32];
        if (obs) snprintf(key, sizeof key, "observer.key");
        else snprintf(key, sizeof key, "v%d.key", i);
        int len = snprintf(text, sizeof text,
                           "# temd config written by temctl testnet (docs/operate.md); paths are\n"
                           "# relative to this file's folder, so the folder can be moved.\n[node]\n"
                           "data_dir = node%d\ngenesis = genesis.json\nkey = keys/%s\n"
                           "listen = %s\nhttp = %s\nobserver = %s\nlog_level = info\n%s%s%s",
                           i, key, a, h, obs ? "true" : "false", obs ? "" : "observer_key = ",
                           obs ? "" : obs_pub, obs ? "" : "\n");
        if (len < 0 || (size_t)len >= sizeof text || ctl_write_file(conf, text, (size_t)len) != 0) return -1;
        snprintf(path, sizeof path, "%s/node%d", t->dir, i);
        if (mkdir(path, 0700) != 0 && errno != EEXIST) return -1;
    }
    say(t, "wrote %s: genesis, keys, feeder-install.tx, node0..4.conf (%u prosumers on %u buses)",
        t->dir, n, t->f.n_buses - 1);
    return 0;
fail:
    json_decref(spec);
    return -1;
}

/* ------------------------------------------------------------------ processes */
static void stop_all(tn *t) {
    for (int i = 0; i < TN_NODES; i++)
        if (t->pid[i] > 0) kill(t->pid[i], SIGTERM);
    int64_t until = ctl_now_ms() + 10000;
    for (int i = 0; i < TN_NODES; i++) {
        while (t->pid[i] > 0) {
            pid_t r = waitpid(t->pid[i], NULL, WNOHANG);
            if (r == t->pid[i] || (r < 0 && errno == ECHILD)) {
                t->pid[i] = 0;
                break;
            }
            if (ctl_now_ms() > until) {
                kill(t->pid[i], SIGKILL);
                (void)waitpid(t->pid[i], NULL, 0);
                t->pid[i] = 0;
                break;
            }
            ctl_sleep_until(ctl_now_ms() + 50, NULL);
        }
    }
}

/* Non-zero when a node we started has exited; names it. */
static int reap_dead(tn *t) {
    for (int i = 0; i < TN_NODES; i++) {
        if (t->pid[i] <= 0) continue;
        int ws;
        if (waitpid(t->pid[i], &ws, WNOHANG) == t->pid[i]) {
            fprintf(stderr, "testnet: node%d (pid %d) exited (%s %d); see %s/node%d/temd.log\n", i,
                    (int)t->pid[i], WIFSIGNALED(ws) ? "signal" : "status",
                    WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws), t->dir, i);
            t->pid[i] = 0;
            return -1;
        }
    }
    return 0;
}

static int start_nodes(tn *t) {
    for (int i = 0; i < TN_NODES; i++) {
        char conf[4400], logp[4400];
        snprintf(conf, sizeof conf, "%s/node%d.conf", t->dir, i);
        snprintf(logp, sizeof logp, "%s/node%d/temd.log", t->dir, i);
        int lfd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (lfd < 0) {
            fprintf(stderr, "testnet: cannot open %s\n", logp);
            return -1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            close(lfd);
            return -1;
        }
        if (pid == 0) {
            if (dup2(lfd, 1) < 0 || dup2(lfd, 2) < 0) _exit(127);
            execl(t->temd, "temd", "--config", conf, (char *)NULL);
            fprintf(stderr, "cannot exec %s: %s\n", t->temd, strerror(errno));
            _exit(127);
        }
        close(lfd);
        t->pid[i] = pid;
        char h[64];
        addr(h, sizeof h, http_port(t, i));
        if (ctl_http_init(&t->conn[i], h, 5000) != 0) return -1;
        say(t, "started %s node%d pid %d (peer %u, http %u)", i == TN_VALIDATORS ? "observer" : "validator",
            i, (int)pid, peer_port(t, i), http_port(t, i));
    }
    int64_t until = ctl_now_ms() + 30000;
    for (int i = 0; i < TN_NODES; i++) {
        ctl_api_status st;
        while (ctl_api_status_get(&t->conn[i], &st) != 0) {
            if (reap_dead(t) != 0 || tn_stop) return -1;
            if (ctl_now_ms() > until) {
                fprintf(stderr, "testnet: node%d's API on port %u did not answer in 30 s\n", i, http_port(t, i));
                return -1;
            }
            ctl_sleep_until(ctl_now_ms() + 200, &tn_stop);
        }
    }
    say(t, "all %d nodes answer /v1/status", TN_NODES);
    return 0;
}

static int install_feeder(tn *t) {
    char path[4400];
    uint8_t *tx;
    size_t len;
    snprintf(path, sizeof path, "%s/feeder-install.tx", t->dir);
    if (ctl_read_file(path, 8u << 20, &tx, &len) != 0) return -1;
    uint8_t txid[32];
    ledger_tx d = {0};
    ledger_tx_limits lim;
    ledger_tx_limits_from_genesis(&t->g, &lim);
    if (ledger_tx_decode(tx, len, &lim, &d) != LEDGER_OK) {
        tem_free(tx);
        return -1;
    }
    memcpy(txid, d.txid, 32);
    ledger_tx_free(&d);
    char err[128];
    int st = ctl_api_submit(&t->conn[0], tx, len, err, sizeof err);
    tem_free(tx);
    if (st != 202) {
        fprintf(stderr, "testnet: feeder install refused at the door: HTTP %d %s\n", st, err);
        return -1;
    }
    int64_t until = ctl_now_ms() + 30000;
    for (;;) {
        ctl_api_tx r;
        if (ctl_api_tx_get(&t->conn[0], txid, &r) == 0 && (r.status == CTL_TX_COMMITTED || r.status == CTL_TX_REFUSED)) {
            if (r.status == CTL_TX_REFUSED)
                fprintf(stderr, "testnet: feeder install refused (%lld %s): the grid check stays off\n",
                        (long long)r.code, r.reason);
            else say(t, "feeder installed at height %llu", (unsigned long long)r.height);
            return 0;
        }
        if (ctl_now_ms() > until || tn_stop || reap_dead(t)) {
            fprintf(stderr, "testnet: feeder install not committed within 30 s\n");
            return -1;
        }
        ctl_sleep_until(ctl_now_ms() + 200, &tn_stop);
    }
}

/* ------------------------------------------------------------------ collecting the chain's figures */
static uint64_t last_block_time(tn *t, uint64_t *height) {
    ctl_api_status st;
    uint64_t tm = 0;
    uint32_t ntx;
    *height = 0;
    if (ctl_api_status_get(&t->conn[0], &st) != 0) return 0;
    *height = st.height;
    if (st.height == 0 || ctl_api_block_get(&t->conn[0], st.height, &tm, &ntx, NULL) != 0) return 0;
    return tm;
}

/* Waits until a block is timed after the last slot's settlement deadline: settlement runs at the
 * start of that block. */
static int wait_settled(tn *t, const ctl_simrun *r) {
    int64_t deadline = (int64_t)t->g.genesis_time_ms + (int64_t)(r->first_slot + r->slots) * t->g.market.slot_ms +
                       t->g.market.settlement_deadline_ms;
    say(t, "waiting for settlement of the last slot (%.1f s)", (deadline - ctl_now_ms()) / 1000.0);
    int64_t until = deadline + 30000;
    for (;;) {
        uint64_t h;
        uint64_t tm = last_block_time(t, &h);
        if ((int64_t)tm > deadline) return 0;
        if (ctl_now_ms() > until || tn_stop || reap_dead(t)) {
            fprintf(stderr, "testnet: no block after the settlement deadline within 30 s\n");
            return -1;
        }
        ctl_sleep_until(ctl_now_ms() + 250, &tn_stop);
    }
}

/* Every node at one height with one state root; waits up to 20 s for stragglers. */
static json_t *agreement(tn *t) {
    json_t *nodes = json_array();
    int64_t until = ctl_now_ms() + 20000;
    bool agree = false;
    ctl_api_status st[TN_NODES];
    while (!agree) {
        agree = true;
        for (int i = 0; i < TN_NODES; i++) {
            if (ctl_api_status_get(&t->conn[i], &st[i]) != 0) memset(&st[i], 0, sizeof st[i]);
            if (st[i].height != st[0].height || strcmp(st[i].state_root, st[0].state_root) != 0 || !st[i].height)
                agree = false;
        }
        if (agree || ctl_now_ms() > until || tn_stop) break;
        ctl_sleep_until(ctl_now_ms() + 300, &tn_stop);
    }
    for (int i = 0; i < TN_NODES; i++) {
        json_t *n = json_object();
        json_object_set_new(n, "node", json_integer(i));
        json_object_set_new(n, "role", json_string(i == TN_VALIDATORS ? "observer" : "validator"));
        json_object_set_new(n, "height", json_integer((json_int_t)st[i].height));
        json_object_set_new(n, "state_root", json_string(st[i].state_root));
        json_array_append_new(nodes, n);
    }
    json_t *a = json_object();
    json_object_set_new(a, "agree", json_boolean(agree));
    json_object_set_new(a, "nodes", nodes);
    return a;
}

static void class_add(json_t *cls, const char *name, int64_t bill, int64_t baseline) {
    json_t *c = json_object_get(cls, name);
    if (!c) {
        c = json_object();
        json_object_set_new(c, "n", json_integer(0));
        json_object_set_new(c, "bill_uunit", json_integer(0));
        json_object_set_new(c, "baseline_uunit", json_integer(0));
        json_object_set_new(cls, name, c);
    }
    json_object_set_new(c, "n", json_integer(json_integer_value(json_object_get(c, "n")) + 1));
    json_object_set_new(c, "bill_uunit", json_integer(json_integer_value(json_object_get(c, "bill_uunit")) + bill));
    json_object_set_new(c, "baseline_uunit",
                        json_integer(json_integer_value(json_object_get(c, "baseline_uunit")) + baseline));
}

/* Solves the feeder at chain slot `slot`'s published base case plus inj (kW per bus index, may
 * be NULL) into fl (initialised by the caller). The feeder's loads are swapped for the slot's and
 * put back. 0, or -1 (out of memory or no solution). */
static int slot_flow(tn *t, uint64_t slot, const double *inj, ctl_feeder_flow *fl) {
    ctl_feeder *f = &t->f;
    uint32_t nb = f->n_buses;
    double *pd = tem_calloc(2 * (size_t)nb, sizeof *pd), *save = tem_calloc(2 * (size_t)nb, sizeof *save);
    int rc = -1;
    if (pd && save) {
        ctl_feeder_base_slot(f, &t->bc, slot, pd, pd + nb);
        for (uint32_t b = 0; b < nb; b++) {
            save[b] = f->buses[b].pd_kw, save[nb + b] = f->buses[b].qd_kvar;
            f->buses[b].pd_kw = pd[b], f->buses[b].qd_kvar = pd[nb + b];
        }
        char err[CTL_FEEDER_ERR_BYTES];
        rc = ctl_feeder_flow_run(f, inj, CTL_FEEDER_TOL_PU, false, fl, err, sizeof err) == 0 ? 0 : -1;
        for (uint32_t b = 0; b < nb; b++) f->buses[b].pd_kw = save[b], f->buses[b].qd_kvar = save[nb + b];
    }
    tem_free(pd);
    tem_free(save);
    return rc;
}

/* Per-slot base-case figures for the report: the feeder's net load (negative: PV export, the
 * flow reversed at the substation), the most loaded line and its loading, and the lowest and
 * highest bus voltage, all before any trade. */
static void base_case_json(tn *t, uint64_t slot, json_t *e) {
    ctl_feeder_flow fl = {0};
    if (ctl_feeder_flow_init(&fl, &t->f) == 0 && slot_flow(t, slot, NULL, &fl) == 0) {
        double *pd = tem_calloc(2 * (size_t)t->f.n_buses, sizeof *pd), net = 0, vmax = 0;
        if (pd) {
            ctl_feeder_base_slot(&t->f, &t->bc, slot, pd, pd + t->f.n_buses);
            for (uint32_t b = 0; b < t->f.n_buses; b++) net += pd[b];
        }
        tem_free(pd);
        uint32_t ml = 0;
        for (uint32_t l = 1; l < t->f.n_lines; l++)
            if (fl.loading_pct[l] > fl.loading_pct[ml]) ml = l;
        for (uint32_t b = 0; b < t->f.n_buses; b++)
            if (fl.vm_pu[b] > vmax) vmax = fl.vm_pu[b];
        char name[48];
        snprintf(name, sizeof name, "line %u-%u", t->f.lines[ml].from, t->f.lines[ml].to);
        json_object_set_new(e, "base_net_kw", json_real(round(net * 10) / 10));
        json_object_set_new(e, "base_max_line", json_string(name));
        json_object_set_new(e, "base_max_loading_pct", json_real(round(fl.loading_pct[ml] * 10) / 10));
        json_object_set_new(e, "base_vmin_pu", json_real(round(fl.vmin_pu * 1e4) / 1e4));
        json_object_set_new(e, "base_vmax_pu", json_real(round(vmax * 1e4) / 1e4));
    }
    ctl_feeder_flow_free(&fl);
}

/* The feeder drawn as a tree from the slack (depth across, branches down) with each line's
 * loading in the base case and at the run slot with the largest export. */
static json_t *feeder_json(tn *t, const ctl_simrun *r, uint32_t peak_slot, json_t *bindings) {
    const ctl_feeder *f = &t->f;
    uint32_t nb = f->n_buses;
    double *x = tem_calloc(nb, sizeof *x), *y = tem_calloc(nb, sizeof *y), *inj = tem_calloc(nb, sizeof *inj);
    uint32_t *stack = tem_calloc(nb + 1, sizeof *stack);
    json_t *out = json_object(), *buses = json_array(), *lines = json_array();
    if (!x || !y || !inj || !stack) goto done;
    /* Depth-first from the slack, children in file order: the first child continues its
     * parent's row, later children open new rows below. */
    double row = 0;
    uint32_t sp = 0;
    stack[sp++] = f->slack;
    bool *done_ = tem_calloc(nb, sizeof *done_);
    if (!done_) goto done;
    y[f->slack] = 0;
    while (sp > 0) {
        uint32_t b = stack[--sp];
        done_[b] = true;
        bool first = true;
        /* Push children in reverse so the first child is visited first. */
        uint32_t kids[64], nk = 0;
        for (uint32_t c = 0; c < nb && nk < 64; c++)
            if (c != f->slack && f->parent[c] == b && !done_[c]) kids[nk++] = c;
        for (uint32_t k = 0; k < nk; k++) {
            uint32_t c = kids[k];
            x[c] = x[b] + 1;
            if (first) y[c] = y[b];
            else y[c] = ++row;
            first = false;
        }
        for (uint32_t k = nk; k-- > 0;) stack[sp++] = kids[k];
    }
    tem_free(done_);
    ctl_feeder_flow base = {0}, peak = {0};
    char err[CTL_FEEDER_ERR_BYTES];
    (void)err;
    /* Both at that slot's published base case: before the prosumers, and with their metered
     * net injections on top. */
    const uint64_t cs = (r ? r->first_slot : 0) + peak_slot;
    bool ok_base = ctl_feeder_flow_init(&base, f) == 0 && slot_flow(t, cs, NULL, &base) == 0;
    for (uint32_t i = 0; r && i < r->n; i++) {
        int64_t bi = ctl_feeder_bus_index(f, r->p[i].bus);
        if (bi >= 0) inj[bi] += -r->rec[(size_t)peak_slot * r->n + i].net_w / 1000.0;
    }
    bool ok_peak = ctl_feeder_flow_init(&peak, f) == 0 && slot_flow(t, cs, inj, &peak) == 0;
    for (uint32_t b = 0; b < nb; b++) {
        json_t *e = json_object();
        json_object_set_new(e, "bus", json_integer(f->buses[b].id));
        json_object_set_new(e, "x", json_real(x[b]));
        json_object_set_new(e, "y", json_real(y[b]));
        json_object_set_new(e, "slack", json_boolean(f->buses[b].slack));
        json_object_set_new(e, "inject_kw", json_real(round(inj[b] * 10) / 10));
        if (ok_peak) json_object_set_new(e, "v_pu", json_real(round(peak.vm_pu[b] * 1e5) / 1e5));
        json_array_append_new(buses, e);
    }
    for (uint32_t l = 0; l < f->n_lines; l++) {
        json_t *e = json_object();
        char name[48];
        snprintf(name, sizeof name, "line %u-%u", f->lines[l].from, f->lines[l].to);
        json_object_set_new(e, "from", json_integer(f->lines[l].from));
        json_object_set_new(e, "to", json_integer(f->lines[l].to));
        json_object_set_new(e, "rate_kva", json_real(f->lines[l].rate_kva));
        if (ok_base) json_object_set_new(e, "base_loading_pct", json_real(round(base.loading_pct[l] * 10) / 10));
        if (ok_peak) json_object_set_new(e, "loading_pct", json_real(round(peak.loading_pct[l] * 10) / 10));
        json_t *bc = json_object_get(bindings, name);
        json_object_set_new(e, "binding_trades", json_integer(bc ? json_integer_value(bc) : 0));
        json_array_append_new(lines, e);
    }
    json_object_set_new(out, "run_slot", json_integer(peak_slot));
    ctl_feeder_flow_free(&base);
    ctl_feeder_flow_free(&peak);
done:
    json_object_set_new(out, "buses", buses);
    json_object_set_new(out, "lines", lines);
    tem_free(x);
    tem_free(y);
    tem_free(inj);
    tem_free(stack);
    return out;
}

static int64_t tx_err_count(json_t *reasons, const char *reason) {
    json_t *v = json_object_get(reasons, reason);
    int64_t n = v ? json_integer_value(v) + 1 : 1;
    json_object_set_new(reasons, reason, json_integer(n));
    return n;
}

/* How far our orders or readings got: sent, taken at the door, and their receipts. */
typedef struct {
    int64_t submitted, accepted, committed, refused;
} tn_tx_counts;

static json_t *tx_counts_json(const tn_tx_counts *c) {
    json_t *o = json_object();
    json_object_set_new(o, "submitted", json_integer(c->submitted));
    json_object_set_new(o, "accepted", json_integer(c->accepted));
    json_object_set_new(o, "committed", json_integer(c->committed));
    json_object_set_new(o, "refused", json_integer(c->refused));
    return o;
}

/* What the report sums over one slot's trades and meters, and again over the run. */
typedef struct {
    int64_t trades, energy_wh, value_uunit, curtailed_wh, curtailed_trades, fees_uunit, import_wh, export_wh;
} tn_trade_sums;

static void trade_sums_json(json_t *o, const tn_trade_sums *s) {
    json_object_set_new(o, "trades", json_integer(s->trades));
    json_object_set_new(o, "energy_wh", json_integer(s->energy_wh));
    json_object_set_new(o, "value_uunit", json_integer(s->value_uunit));
    json_object_set_new(o, "avg_price", json_integer(s->energy_wh ? s->value_uunit * 1000 / s->energy_wh : 0));
    json_object_set_new(o, "curtailed_wh", json_integer(s->curtailed_wh));
    json_object_set_new(o, "curtailed_trades", json_integer(s->curtailed_trades));
    json_object_set_new(o, "fees_uunit", json_integer(s->fees_uunit));
    json_object_set_new(o, "import_wh", json_integer(s->import_wh));
    json_object_set_new(o, "export_wh", json_integer(s->export_wh));
}

/* The dataset of docs/sim.md ("testnet-data.json"): everything the summary and the report show,
 * read back from the chain through the API (trades, receipts, accounts, blocks) beside what the
 * simulator metered. */
static json_t *collect(tn *t, ctl_simrun *r) {
    json_t *d = json_object();
    const ledger_genesis *g = &t->g;
    json_object_set_new(d, "chain_id", json_string(g->chain_id));
    json_object_set_new(d, "mechanism", json_string(g->market.mechanism == LEDGER_MECH_CALL ? "call" : "cda"));
    json_object_set_new(d, "validators", json_integer(g->n_validators));
    json_object_set_new(d, "observers", json_integer(1));
    json_object_set_new(d, "prosumers", json_integer(r->n));
    json_object_set_new(d, "feeder", json_string(t->feeder));
    json_object_set_new(d, "slot_ms", json_integer(g->market.slot_ms));
    json_object_set_new(d, "slot_minutes", json_integer(r->cfg.slot_minutes));
    json_object_set_new(d, "start_minute", json_integer(r->cfg.start_minute));
    json_object_set_new(d, "first_slot", json_integer((json_int_t)r->first_slot));
    json_object_set_new(d, "slots", json_integer(r->slots));
    json_object_set_new(d, "seed", json_integer((json_int_t)r->cfg.seed));

    /* Blocks and txs committed. */
    ctl_api_status st;
    uint64_t height = ctl_api_status_get(&t->conn[0], &st) == 0 ? st.height : 0, txs = 0;
    for (uint64_t h = 1; h <= height && !tn_stop; h++) {
        uint64_t tm;
        uint32_t n;
        if (ctl_api_block_get(&t->conn[0], h, &tm, &n, NULL) == 0) txs += n;
    }
    json_object_set_new(d, "blocks", json_integer((json_int_t)height));
    json_object_set_new(d, "txs", json_integer((json_int_t)txs));

    /* Our txs: orders and readings, at the door and in receipts. */
    json_t *reasons = json_object();
    tn_tx_counts orders_n = {0}, readings_n = {0};
    int64_t minted = 0, exported_ok = 0, rc_curtailed = 0;
    for (size_t i = 0; i < r->n_txs; i++) {
        const ctl_simrun_tx *x = &r->txs[i];
        bool o = x->kind == 'o';
        tn_tx_counts *c = o ? &orders_n : &readings_n;
        c->submitted++;
        if (x->http_status != 202) continue;
        c->accepted++;
        if (x->result.status == CTL_TX_COMMITTED) c->committed++;
        if (x->result.status == CTL_TX_REFUSED) {
            c->refused++;
            (void)tx_err_count(reasons, x->result.reason[0] ? x->result.reason : "refused");
        }
        if (o) rc_curtailed += (int64_t)x->result.curtailed_wh;
        if (!o && x->result.status == CTL_TX_COMMITTED) {
            minted += x->result.minted_wh;
            const ctl_sim_slot *s = &r->rec[(size_t)x->run_slot * r->n + x->prosumer];
            exported_ok += r->p[x->prosumer].cls == CTL_SIM_CONSUMER ? 0 : (int64_t)s->export_wh;
        }
    }
    json_t *orders = tx_counts_json(&orders_n);
    json_object_set_new(orders, "curtailed_wh_in_receipts", json_integer(rc_curtailed));
    json_object_set_new(d, "orders", orders);
    json_object_set_new(d, "readings", tx_counts_json(&readings_n));
    json_object_set_new(d, "refusals", reasons);

    /* Trades per slot, from /v1/trades; the snapshot taken after gate closure stands in if the
     * node no longer lists a settled slot. */
    json_t *slots = json_array(), *bind = json_object();
    tn_trade_sums tot = {0};
    uint32_t peak_slot = 0;
    int64_t peak_exp = -1;
    for (uint32_t k = 0; k < r->slots; k++) {
        ctl_api_trade *tr = NULL;
        size_t nt = 0;
        bool fresh = ctl_api_trades_get(&t->conn[0], r->first_slot + k, &tr, &nt) == 0;
        const ctl_api_trade *use = tr;
        size_t nuse = nt;
        if (r->have_snap[k] && (r->snap_from_receipts[k] || !fresh || nt < r->n_snap[k])) {
            use = r->snap[k];
            nuse = r->n_snap[k];
        }
        tn_trade_sums sum = {0};
        int64_t ords = 0;
        for (size_t j = 0; j < nuse; j++) {
            /* A match the grid check curtailed to 0 Wh moved nothing: the chain does not list it
             * as a trade, so neither does the report (it still counts as curtailed). */
            sum.trades += use[j].quantity_wh > 0;
            sum.energy_wh += (int64_t)use[j].quantity_wh;
            sum.value_uunit += (int64_t)(use[j].quantity_wh * use[j].price / 1000);
            sum.curtailed_wh += (int64_t)use[j].curtailed_wh;
            sum.fees_uunit += (int64_t)(use[j].network_fee + use[j].loss_fee);
            if (use[j].curtailed_wh > 0) {
                sum.curtailed_trades++;
                (void)tx_err_count(bind, use[j].binding[0] ? use[j].binding : "unnamed");
            }
        }
        for (uint32_t i = 0; i < r->n; i++) {
            const ctl_sim_slot *s = &r->rec[(size_t)k * r->n + i];
            sum.import_wh += (int64_t)s->import_wh;
            sum.export_wh += r->p[i].cls == CTL_SIM_CONSUMER ? 0 : (int64_t)s->export_wh;
            ords += s->side != 0;
        }
        if (sum.export_wh > peak_exp) peak_exp = sum.export_wh, peak_slot = k;
        int64_t rt, fi;
        ctl_simrun_tariff(g, r->first_slot + k, &rt, &fi);
        json_t *e = json_object();
        json_object_set_new(e, "slot", json_integer((json_int_t)(r->first_slot + k)));
        json_object_set_new(e, "minute", json_integer((r->cfg.start_minute + k * r->cfg.slot_minutes) % 1440));
        json_object_set_new(e, "orders", json_integer(ords));
        trade_sums_json(e, &sum);
        json_object_set_new(e, "retail", json_integer(rt));
        json_object_set_new(e, "feed_in", json_integer(fi));
        json_object_set_new(e, "source", json_string(use == tr ? "api" : r->snap_from_receipts[k] ? "receipts" : "snapshot"));
        base_case_json(t, r->first_slot + k, e);
        json_array_append_new(slots, e);
        tot.trades += sum.trades, tot.energy_wh += sum.energy_wh, tot.value_uunit += sum.value_uunit;
        tot.curtailed_wh += sum.curtailed_wh, tot.curtailed_trades += sum.curtailed_trades;
        tot.fees_uunit += sum.fees_uunit, tot.import_wh += sum.import_wh, tot.export_wh += sum.export_wh;
        tem_free(tr);
    }
    json_object_set_new(d, "per_slot", slots);
    json_t *totals = json_object();
    trade_sums_json(totals, &tot);
    json_object_set_new(totals, "local_share",
                        json_real(tot.import_wh ? fmin(1.0, (double)tot.energy_wh / (double)tot.import_wh) : 0));
    json_object_set_new(d, "totals", totals);
    json_object_set_new(d, "bindings", bind);

    /* Bills against the feed-in-tariff baseline, and conservation over every genesis account. */
    json_t *pros = json_array(), *cls = json_object();
    int64_t money0 = 0, money1 = 0, tokens1 = 0;
    bool all_accounts = true;
    for (uint32_t j = 0; j < g->n_participants; j++) {
        /* Meters are devices, not accounts: they hold nothing. */
        if (g->participants[j].role == TEM__V1__ROLE__METER) continue;
        ctl_api_account a;
        money0 += g->participants[j].money_uunit;
        if (ctl_api_account_get(&t->conn[0], g->participants[j].pubkey, &a) != 0) {
            all_accounts = false;
            continue;
        }
        money1 += a.money_uunit + a.escrow_uunit;
        tokens1 += a.tokens_wh + a.escrow_tokens_wh;
        int i = -1;
        for (uint32_t q = 0; q < r->n && i < 0; q++)
            if (memcmp(r->pub[q], g->participants[j].pubkey, 33) == 0) i = (int)q;
        if (i < 0) continue;
        int64_t baseline = 0;
        for (uint32_t k = 0; k < r->slots; k++) {
            const ctl_sim_slot *s = &r->rec[(size_t)k * r->n + (uint32_t)i];
            int64_t rt, fi, cost = 0, inc = 0;
            ctl_simrun_tariff(g, r->first_slot + k, &rt, &fi);
            bool ok = tem_mul_div_ceil((int64_t)s->import_wh, rt, 1000, &cost);
            if (r->p[i].cls != CTL_SIM_CONSUMER) ok = tem_mul_div_floor((int64_t)s->export_wh, fi, 1000, &inc) && ok;
            if (ok) baseline += cost - inc;
        }
        int64_t bill = g->participants[j].money_uunit - a.money_uunit - a.escrow_uunit + a.debt_uunit;
        json_t *e = json_object();
        json_object_set_new(e, "index", json_integer(i));
        json_object_set_new(e, "bus", json_integer(r->p[i].bus));
        json_object_set_new(e, "class", json_string(ctl_sim_class_name(r->p[i].cls)));
        json_object_set_new(e, "strategy", json_string(ctl_sim_strategy_name(r->p[i].strategy)));
        json_object_set_new(e, "bill_uunit", json_integer(bill));
        json_object_set_new(e, "baseline_uunit", json_integer(baseline));
        json_object_set_new(e, "tokens_wh", json_integer(a.tokens_wh + a.escrow_tokens_wh));
        json_array_append_new(pros, e);
        class_add(cls, ctl_sim_class_name(r->p[i].cls), bill, baseline);
    }
    json_object_set_new(d, "prosumer_bills", pros);
    json_object_set_new(d, "classes", cls);
    json_t *cons = json_object();
    json_object_set_new(cons, "all_accounts_read", json_boolean(all_accounts));
    json_object_set_new(cons, "money_genesis_uunit", json_integer(money0));
    json_object_set_new(cons, "money_end_uunit", json_integer(money1));
    json_object_set_new(cons, "money_conserved", json_boolean(all_accounts && money0 == money1));
    json_object_set_new(cons, "tokens_minted_wh", json_integer(minted));
    json_object_set_new(cons, "readings_export_wh", json_integer(exported_ok));
    json_object_set_new(cons, "tokens_held_wh", json_integer(tokens1));
    json_object_set_new(cons, "tokens_conserved",
                        json_boolean(all_accounts && minted == exported_ok && tokens1 >= 0 && tokens1 <= minted));
    json_object_set_new(d, "conservation", cons);
    json_object_set_new(d, "feeder_map", feeder_json(t, r, peak_slot, bind));
    json_object_set_new(d, "agreement", agreement(t));
    return d;
}

/* ------------------------------------------------------------------ run */
/* Every port the run will bind must be free on 127.0.0.1. A busy HTTP port that answers
 * /v1/status is another chain (a testnet still running): say which, instead of later talking to
 * it and failing with a foreign chain's errors (ENOTADMIN). */
static int ports_free(const tn *t) {
    for (int i = 0; i < TN_NODES; i++) {
        uint32_t ports[2] = {peer_port(t, i), http_port(t, i)};
        for (int k = 0; k < 2; k++) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) return -1;
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ports[k]),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            int one = 1;
            (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            int rc = bind(fd, (struct sockaddr *)&a, sizeof a);
            int err = errno;
            close(fd);
            if (rc == 0) continue;
            char h[64];
            ctl_http_conn c;
            ctl_api_status st;
            addr(h, sizeof h, ports[k]);
            if (ctl_http_init(&c, h, 2000) == 0 && ctl_api_status_get(&c, &st) == 0)
                fprintf(stderr, "testnet: port %u already serves chain %s (height %llu): another testnet is running; "
                                "stop it or pass --base-port\n",
                        ports[k], st.chain_id, (unsigned long long)st.height);
            else
                fprintf(stderr, "testnet: port %u on 127.0.0.1 is in use (%s); pass another --base-port\n", ports[k],
                        strerror(err));
            ctl_http_close(&c);
            return -1;
        }
    }
    return 0;
}

static int run(tn *t) {
    if (access(t->temd, X_OK) != 0) {
        fprintf(stderr, "testnet: no temd at %s (build it with make, or pass --temd)\n", t->temd);
        return CTL_INVALID;
    }
    t->run_slots_only = true;
    if (ports_free(t) != 0) return CTL_INVALID;
    if (gen(t) != 0) return CTL_INVALID;
    int status = CTL_INVALID;
    json_t *data = NULL;
    ctl_simrun r = {0};
    if (start_nodes(t) != 0 || install_feeder(t) != 0) goto out;

    ctl_sim_config c;
    ctl_sim_config_default(&c);
    c.seed = t->seed;
    if (t->power_scale > 0) c.power_scale = t->power_scale;
    c.slot_ms = t->g.market.slot_ms;
    c.start_minute = ctl_sim_start_minute(t->slots, c.slot_minutes);
    if (ctl_simrun_init(&r, &t->g, &c, t->prosumers, t->slots) != 0) goto out;
    for (uint32_t i = 0; i < t->prosumers; i++) {
        memcpy(r.sec[i], t->psec[i], 32);
        memcpy(r.pub[i], t->ppub[i], 33);
        memcpy(r.msec[i], t->msec[i], 32);
        memcpy(r.mpub[i], t->mpub[i], 33);
        r.has_meter[i] = true;
        ctl_sim_prosumer_init(&r.p[i], &c, i, t->bus[i], t->bus_load_w[i], t->per_bus[i]);
    }
    r.nodes = t->conn;
    r.n_nodes = TN_VALIDATORS;
    r.stop = &tn_stop;
    r.quiet = t->quiet;
    /* The run covers exactly the slots the genesis meters answer for, so no slot is settled as
     * a silent meter. Nodes slower to start than TN_METER_LEAD_MS miss the first orders (EGATE)
     * but not the readings. */
    r.first_slot = t->meter_from;
    if (ctl_simrun_first_slot(&t->g, ctl_now_ms() + 500) > r.first_slot)
        say(t, "late start: the first slots' orders will miss their gate closure");
    say(t, "simulating %u slots (chain slots %llu..%llu, %u s each = %u simulated minutes, from %02u:%02u)",
        t->slots, (unsigned long long)r.first_slot, (unsigned long long)(r.first_slot + t->slots - 1),
        t->slot_seconds, c.slot_minutes, c.start_minute / 60, c.start_minute % 60);
    bool interrupted = false;
    if (ctl_simrun_run(&r) != 0) {
        /* Ctrl-C: report what ran (the slots whose readings are in), not nothing. */
        if (!tn_stop || r.slots_read == 0) goto out;
        interrupted = true;
        say(t, "interrupted after %u of %u slots: reporting those", r.slots_read, t->slots);
        r.slots = r.slots_read;
    } else if (wait_settled(t, &r) != 0) {
        if (!tn_stop) goto out;
        interrupted = true;
    }
    ctl_simrun_collect(&r, 30000);
    data = collect(t, &r);
    if (interrupted) json_object_set_new(data, "interrupted", json_true());
    char path[4400];
    snprintf(path, sizeof path, "%s/testnet-data.json", t->dir);
    if (json_dump_file(data, path, JSON_INDENT(1) | JSON_PRESERVE_ORDER) != 0) {
        fprintf(stderr, "testnet: cannot write %s\n", path);
        goto out;
    }
    if (ctl_report_text(data, stdout) != 0 || ctl_report_html(data, t->report) != 0) goto out;
    fflush(stdout);
    say(t, "report: %s, data: %s", t->report, path);
    status = interrupted ? CTL_INVALID : CTL_OK;
    if (!json_is_true(json_object_get(json_object_get(data, "agreement"), "agree"))) {
        fprintf(stderr, "testnet: the nodes do not agree on height and state root\n");
        status = CTL_INVALID;
    }
    if (!t->exit_after && status == CTL_OK) {
        say(t, "nodes keep running (HTTP on 127.0.0.1:%u..%u); Ctrl-C stops them", http_port(t, 0),
            http_port(t, TN_NODES - 1));
        while (!tn_stop && reap_dead(t) == 0) ctl_sleep_until(ctl_now_ms() + 500, &tn_stop);
    }
out:
    if (tn_stop) say(t, "interrupted");
    stop_all(t);
    say(t, "stopped every node it started");
    ctl_simrun_free(&r);
    json_decref(data);
    return status;
}

/* ------------------------------------------------------------------ the verb */
static const char USAGE[] =
    "usage: temctl testnet run --dir DIR [--prosumers N] [--slots N] [--slot-seconds S] [--mechanism cda|call]\n"
    "                          [--feeder DIR] [--exit] [--base-port P] [--seed N]\n"
    "                          [--temd PATH] [--report FILE] [--quiet] [--power-scale X]\n"
    "  --power-scale X multiplies every prosumer's load and PV (default 1): a larger X loads the\n"
    "  feeder until the DSO's grid check curtails trades and names the binding line or bus.\n"
    "  A local energy market: keys and a genesis for 4 validators, a DSO, a utility and N\n"
    "  prosumers on the feeder (default 32 on case33bw), 4 temd validators + 1 observer on\n"
    "  127.0.0.1 (peer ports P..P+4, HTTP P+100..P+104; P = 26600), the feeder installed, the\n"
    "  prosumer simulator for N slots of S seconds (default 96 x 3 s: a day of 15-minute slots),\n"
    "  then a summary, FILE (default DIR/testnet-report.html) and DIR/testnet-data.json. Nodes keep\n"
    "  running until Ctrl-C unless --exit; Ctrl-C during the run reports the slots that ran.\n"
    "  --dir is required. A port in use (another testnet, another program) is named before\n"
    "  anything starts: pick another --base-port.\n"
    "       temctl testnet gen [same options] [--hosts H0,H1,H2,H3,H4]\n"
    "  Only writes DIR (keys, genesis, configs, feeder tx). --hosts gives each node its own\n"
    "  address (containers, network namespaces): all use ports P and P+100 and listen on 0.0.0.0.\n"
    "       temctl testnet report --data DIR/testnet-data.json [--report FILE (default DIR/testnet-report.html)]\n";

static const char *default_feeder(void) {
    static const char *const cands[] = {"../shared/data/feeders/case33bw", "deploy/feeders/case33bw"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/buses.csv", cands[i]);
        if (access(p, R_OK) == 0) return cands[i];
    }
    return cands[1];
}

static int parse(tn *t, const ctl_opts *o) {
    uint64_t v;
    struct {
        const char *name;
        uint32_t *dst;
        uint64_t lo, hi;
    } nums[] = {{"prosumers", &t->prosumers, 1, CTL_SIM_PROSUMERS_MAX},
                {"slots", &t->slots, 1, 10000},
                {"slot-seconds", &t->slot_seconds, 1, 3600},
                {"base-port", &t->base_port, 1024, 65400}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        const char *s = ctl_opt(o, nums[i].name);
        if (!s) continue;
        if (!ctl_parse_u64(s, &v) || v < nums[i].lo || v > nums[i].hi) {
            fprintf(stderr, "testnet: --%s must be %llu..%llu\n", nums[i].name, (unsigned long long)nums[i].lo,
                    (unsigned long long)nums[i].hi);
            return -1;
        }
        *nums[i].dst = (uint32_t)v;
    }
    if (ctl_opt(o, "seed") && !ctl_parse_u64(ctl_opt(o, "seed"), &t->seed)) return -1;
    if (ctl_opt(o, "power-scale")) {
        char *end;
        t->power_scale = strtod(ctl_opt(o, "power-scale"), &end);
        if (*end || !(t->power_scale > 0 && t->power_scale <= 100)) {
            fprintf(stderr, "testnet: --power-scale must be a number in (0, 100]\n");
            return -1;
        }
    }
    const char *hs = ctl_opt(o, "hosts");
    if (hs) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", hs);
        int k = 0;
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (k == TN_NODES || strlen(tok) >= sizeof t->hosts[0]) break;
            snprintf(t->hosts[k++], sizeof t->hosts[0], "%s", tok);
        }
        if (k != TN_NODES) {
            fprintf(stderr, "testnet: --hosts needs %d comma-separated hosts (v0..v3, observer)\n", TN_NODES);
            return -1;
        }
        t->have_hosts = true;
    }
    const char *m = ctl_opt(o, "mechanism");
    if (m && strcmp(m, "cda") && strcmp(m, "call")) {
        fprintf(stderr, "testnet: --mechanism must be cda or call\n");
        return -1;
    }
    t->mechanism = m && !strcmp(m, "call") ? LEDGER_MECH_CALL : LEDGER_MECH_CDA;
    t->exit_after = ctl_flag(o, "exit");
    t->quiet = ctl_flag(o, "quiet");
    /* run and gen write keys, data dirs and a report: refuse to start that in whatever folder
     * the command happened to run in. */
    const char *dir = ctl_opt(o, "dir");
    if (!dir) {
        fprintf(stderr, "testnet: --dir DIR is required (keys, genesis, data dirs, logs and the report go there)\n");
        return -1;
    }
    /* Absolute paths: node configs are read by processes that may run elsewhere. */
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "testnet: cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (!realpath(dir, t->dir)) return -1;
    const char *fd = ctl_opt(o, "feeder") ? ctl_opt(o, "feeder") : default_feeder();
    if (!realpath(fd, t->feeder)) {
        fprintf(stderr, "testnet: feeder folder %s: %s\n", fd, strerror(errno));
        return -1;
    }
    /* The report lands beside the dataset, in DIR, not wherever the command ran (the repo root). */
    if (ctl_opt(o, "report")) snprintf(t->report, sizeof t->report, "%s", ctl_opt(o, "report"));
    else if ((size_t)snprintf(t->report, sizeof t->report, "%s/testnet-report.html", t->dir) >= sizeof t->report) return -1;
    if (ctl_opt(o, "temd")) {
        snprintf(t->temd, sizeof t->temd, "%s", ctl_opt(o, "temd"));
    } else {
        /* temd sits beside temctl in the build folder. */
        char self[3800];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) return -1;
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) *slash = 0;
        snprintf(t->temd, sizeof t->temd, "%s/temd", self);
    }
    return 0;
}

int ctl_testnet_main(int argc, char **argv) {
    ctl_opts o;
    if (argc < 2 || ctl_opts_parse(&o, argc, argv, 2, "exit quiet") != 0) {
        fputs(USAGE, stderr);
        return CTL_USAGE;
    }
    if (o.help || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(USAGE, stdout);
        return CTL_OK;
    }
    if (o.npos) {
        fputs(USAGE, stderr);
        return CTL_USAGE;
    }
    if (!strcmp(argv[1], "report")) {
        const char *dp = ctl_opt(&o, "data");
        if (!dp) {
            fputs(USAGE, stderr);
            return CTL_USAGE;
        }
        json_error_t je;
        json_t *d = json_load_file(dp, 0, &je);
        if (!d) {
            fprintf(stderr, "testnet: %s:%d: %s\n", dp, je.line, je.text);
            return CTL_INVALID;
        }
        /* Default: beside the dataset. */
        char rpbuf[4200];
        const char *slash = strrchr(dp, '/');
        snprintf(rpbuf, sizeof rpbuf, "%.*s%stestnet-report.html", slash ? (int)(slash - dp) : 0, dp, slash ? "/" : "");
        const char *rp = ctl_opt(&o, "report") ? ctl_opt(&o, "report") : rpbuf;
        int rc = ctl_report_text(d, stdout) == 0 && ctl_report_html(d, rp) == 0 ? CTL_OK : CTL_INVALID;
        json_decref(d);
        return rc;
    }
    if (strcmp(argv[1], "run") && strcmp(argv[1], "gen")) {
        fputs(USAGE, stderr);
        return CTL_USAGE;
    }
    tn *t = tem_calloc(1, sizeof *t);
    if (!t) return CTL_INVALID;
    *t = (tn){.prosumers = 32, .slots = 96, .slot_seconds = 3, .base_port = 26600, .seed = 1};
    for (int i = 0; i < TN_NODES; i++) t->conn[i].fd = -1;
    int rc = CTL_USAGE;
    if (parse(t, &o) == 0) {
        struct sigaction sa = {.sa_handler = tn_on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (!strcmp(argv[1], "gen")) rc = gen(t) == 0 ? CTL_OK : CTL_INVALID;
        else if (t->have_hosts) fprintf(stderr, "testnet: --hosts is for gen only; run uses loopback\n");
        else rc = run(t);
        if (tn_stop && rc == CTL_INVALID) rc = 130;
    }
    tn_free(t);
    tem_free(t);
    return rc;
}
