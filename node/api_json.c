/* api_json.c: the JSON answers every HTTP handler of the node shares (api.c, api_market.c), kept
 * apart so the handler files call into it and never into each other. */
#include "node/node_internal.h"

#include <jansson.h>

void node_reply_err(net_http_req *req, int status, const char *code, const char *msg) {
    /* NET_EGONE only means the client left; nothing else to do with the answer. */
    if (net_http_reply_error(req, status, code, msg) != NET_OK) return;
}
void node_reply_raw(net_http_req *req, int status, const char *ct, const void *body, size_t len) {
    if (net_http_reply(req, status, ct, body, len) != NET_OK) return;
}

json_t *node_hexj(const uint8_t *b, size_t n) {
    char *h = tem_malloc(2 * n + 1);
    if (!h) return json_null();
    tem_hex(h, b, n);
    json_t *j = json_string(h);
    tem_free(h);
    return j;
}

/* Any protobuf-c message as JSON: bytes as hex, enums as numbers, nested messages recursively.
 * Used for receipts and headers so fields added to the schema show up without code changes. */
json_t *node_pb_json(const ProtobufCMessage *m) {
    json_t *o = json_object();
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const uint8_t *base = (const uint8_t *)m + f->offset;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t qc = *(const uint32_t *)((const uint8_t *)m + f->quantifier_offset);
            if (qc != f->id) continue;
        }
        size_t count = 1;
        const uint8_t *items = base;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            count = *(const size_t *)((const uint8_t *)m + f->quantifier_offset);
            items = *(const uint8_t *const *)base;
        }
        json_t *arr = f->label == PROTOBUF_C_LABEL_REPEATED ? json_array() : NULL;
        for (size_t k = 0; k < count; k++) {
            json_t *v = NULL;
            switch (f->type) {
            case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32: case PROTOBUF_C_TYPE_ENUM:
                v = json_integer(((const int32_t *)items)[k]); break;
            case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
                v = json_integer(((const uint32_t *)items)[k]); break;
            case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
                v = json_integer(((const int64_t *)items)[k]); break;
            case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
                v = json_integer((json_int_t)((const uint64_t *)items)[k]); break;
            case PROTOBUF_C_TYPE_BOOL: v = json_boolean(((const protobuf_c_boolean *)items)[k]); break;
            case PROTOBUF_C_TYPE_STRING: {
                const char *s = ((const char *const *)items)[k];
                v = json_string(s ? s : "");
                break;
            }
            case PROTOBUF_C_TYPE_BYTES: {
                const ProtobufCBinaryData *b = &((const ProtobufCBinaryData *)items)[k];
                v = node_hexj(b->data, b->len);
                break;
            }
            case PROTOBUF_C_TYPE_MESSAGE: {
                const ProtobufCMessage *sub = ((const ProtobufCMessage *const *)items)[k];
                v = sub ? node_pb_json(sub) : json_null();
                break;
            }
            default: v = json_null();
            }
            if (arr) json_array_append_new(arr, v);
            else json_object_set_new(o, f->name, v);
        }
        if (arr) json_object_set_new(o, f->name, arr);
    }
    return o;
}

void node_reply_json(net_http_req *req, int status, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) {
        node_reply_err(req, 500, "ENOMEM", "out of memory");
        return;
    }
    node_reply_raw(req, status, "application/json", s, strlen(s));
    free(s);
}


/* The largest slot whose start (genesis time + slot * slot_ms) fits the chain's int64 clock. */
static uint64_t slot_max(const node *n) {
    int64_t ms = n->g.market.slot_ms > 0 ? n->g.market.slot_ms : 1;
    return (uint64_t)((INT64_MAX - (int64_t)n->g.genesis_time_ms) / ms);
}

/* A slot number in 0..slot_max; anything else (not a number, past 2^64, past the clock) is
 * refused so a client gets 400 naming the range rather than an empty 200. */
bool node_parse_slot(const node *n, const char *s, uint64_t *out) {
    char *end;
    if (!s || !*s || *s < '0' || *s > '9') return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno == ERANGE || v > slot_max(n)) return false;
    *out = v;
    return true;
}

void node_reply_bad_slot(const node *n, net_http_req *req) {
    char msg[128];
    snprintf(msg, sizeof msg, "slot must be a number from 0 to %llu", (unsigned long long)slot_max(n));
    node_reply_err(req, 400, "ESLOT", msg);
}
