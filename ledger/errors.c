/* errors.c: names and messages of the ledger's error codes, generated from LEDGER_ERRNO_MAP. */
#include "ledger/ledger.h"

const char *ledger_strerror(int err) {
    switch (err) {
    case LEDGER_OK: return "ok";
#define LEDGER_X(name, val, msg) case val: return msg;
        LEDGER_ERRNO_MAP(LEDGER_X)
#undef LEDGER_X
    default: return "unknown error";
    }
}

const char *ledger_errname(int err) {
    switch (err) {
    case LEDGER_OK: return "OK";
#define LEDGER_X(name, val, msg) case val: return #name;
        LEDGER_ERRNO_MAP(LEDGER_X)
#undef LEDGER_X
    default: return "EUNKNOWN";
    }
}
