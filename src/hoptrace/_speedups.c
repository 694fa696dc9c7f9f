/*
 * hoptrace._speedups: the common case of reading and writing hoptrace's headers, in C.
 *
 * Optional. hoptrace/core/propagation.py uses these functions when this module imports and
 * HOPTRACE_PURE_PYTHON is unset; it keeps the pure-Python code for every other case, and the
 * tests check both paths give the same results.
 *
 * Both functions handle only well-formed input of the exact types hoptrace itself sends:
 *
 * read_common() returns None for anything else (a tracestate, a value that is not a plain ASCII
 * str, an ID that is malformed or zero, baggage other than the transaction ID mirror, alone or
 * after the pathway's origin entry...), and the Python reader then does the whole read, with its
 * warnings and rejection reasons. read_pairs() does the same for a list or tuple of
 * (str, bytes) pairs, the Kafka clients' headers, and returns None as well for a header seen
 * twice, a value that is not ASCII bytes or str, or an item that is not an exact 2-tuple.
 * read_incoming() is either of them plus what the Python reader then builds from their result
 * (the span context, the baggage): what propagation.read() calls, once per consumed message.
 *
 * write_common() returns False when it cannot write the values exactly as the Python writer
 * would, and writes nothing then.
 * pairs_of() turns a dict of str header values into Kafka's list of (name, UTF-8 bytes)
 * pairs, and returns None for anything else.
 * record_id() is a Kafka record's message ID, "topic-partition@offset", or None.
 *
 * dropped_child() is hoptrace/core/_sdk_spans.py's Starter.dropped_child (the span the sampler
 * is known to drop), step for step in one call; _sdk_spans uses it under the same conditions.
 * start_lazy() is Starter.start_lazy for a root under ParentBased(TraceIdRatioBased(r)) (its
 * other cases go to the Python method); dropped_span() and lazy_span() are
 * hoptrace/core/spans.py's dropped_child and lazy_span (the starter in force, then the entry).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

/* Value of a lowercase hex digit, or -1. W3C Trace Context allows only lowercase. */
static signed char hex_value[256];
static const char hex_digits[] = "0123456789abcdef";

static PyObject *time_ns_func = NULL; /* time.time_ns, where clock_gettime is missing */

/* The pathway metric's baggage entry (hoptrace.core.metrics.ORIGIN_BAGGAGE_KEY) and "=", and
 * the most digits its value may have (ms since the epoch). */
#define ORIGIN_PREFIX "hoptrace.origin_ms="
#define ORIGIN_PREFIX_SIZE ((Py_ssize_t)(sizeof(ORIGIN_PREFIX) - 1))
#define ORIGIN_MAX_DIGITS 16

/* 1 if the mirror prefix m ("<key>=", ASCII) is the origin entry's own key and "=". */
static int
origin_key(const unsigned char *m, Py_ssize_t m_size)
{
    return m_size == ORIGIN_PREFIX_SIZE && memcmp(m, ORIGIN_PREFIX, (size_t)m_size) == 0;
}

/* 1 if p[0:n] is 1 to ORIGIN_MAX_DIGITS ASCII digits, else 0. */
static int
origin_digits(const unsigned char *p, Py_ssize_t n)
{
    if (n < 1 || n > ORIGIN_MAX_DIGITS) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
    }
    return 1;
}

static void
init_tables(void)
{
    memset(hex_value, -1, sizeof(hex_value));
    for (int i = 0; i < 10; i++) {
        hex_value['0' + i] = (signed char)i;
    }
    for (int i = 0; i < 6; i++) {
        hex_value['a' + i] = (signed char)(10 + i);
    }
}

/* The ASCII bytes of an exact str, or NULL (with no error set) for anything else. */
static const unsigned char *
ascii_of(PyObject *value, Py_ssize_t *length)
{
    if (!PyUnicode_CheckExact(value)) {
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(value) < 0) {
        PyErr_Clear();
        return NULL;
    }
#endif
    if (!PyUnicode_IS_ASCII(value)) {
        return NULL;
    }
    *length = PyUnicode_GET_LENGTH(value);
    return (const unsigned char *)PyUnicode_DATA(value);
}

/* Parse n lowercase hex digits (n <= 16); 0 on success, -1 if one is not a hex digit. */
static int
parse_hex(const unsigned char *p, int n, unsigned long long *out)
{
    unsigned long long value = 0;
    for (int i = 0; i < n; i++) {
        signed char digit = hex_value[p[i]];
        if (digit < 0) {
            return -1;
        }
        value = (value << 4) | (unsigned long long)digit;
    }
    *out = value;
    return 0;
}

static PyObject *
int_from_halves(unsigned long long high, unsigned long long low)
{
    if (high == 0) {
        return PyLong_FromUnsignedLongLong(low);
    }
#if PY_VERSION_HEX < 0x030D0000
    /* One conversion instead of three ints, a shift and an or. */
    unsigned char bytes[16];
    for (int i = 0; i < 8; i++) {
        bytes[7 - i] = (unsigned char)(high >> (8 * i));
        bytes[15 - i] = (unsigned char)(low >> (8 * i));
    }
    return _PyLong_FromByteArray(bytes, 16, 0, 0);
#endif
    PyObject *result = NULL, *h = NULL, *shift = NULL, *shifted = NULL, *l = NULL;
    h = PyLong_FromUnsignedLongLong(high);
    shift = PyLong_FromLong(64);
    l = PyLong_FromUnsignedLongLong(low);
    if (h != NULL && shift != NULL && l != NULL) {
        shifted = PyNumber_Lshift(h, shift);
        if (shifted != NULL) {
            result = PyNumber_Or(shifted, l);
        }
    }
    Py_XDECREF(h);
    Py_XDECREF(shift);
    Py_XDECREF(shifted);
    Py_XDECREF(l);
    return result;
}

/* Look a header up in an exact dict. 1 found (*value is a new reference), 0 missing, -1
 * error (the caller falls back). A strong reference: a key with a Python-level __eq__ met by
 * a later lookup could otherwise remove this value from the dict and free it. */
static int
lookup(PyObject *carrier, PyObject *key, PyObject **value)
{
    *value = PyDict_GetItemWithError(carrier, key);
    if (*value != NULL) {
        Py_INCREF(*value);
        return 1;
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* The headers a read looks at, in read_common's argument order. */
enum { W_TRACEPARENT, W_TRACESTATE, W_BAGGAGE, W_TRANSACTION, W_SENT, N_WANTED };

/* What parse_found() found valid, for the caller to turn into objects. */
typedef struct {
    int has_traceparent;
    unsigned long long trace_high, trace_low, span_id, flags;
    PyObject *transaction; /* a new reference, or NULL */
    int mirrored;
    Py_ssize_t origin_size; /* digits of the origin entry, when the baggage has one */
    int has_sent;
    char digits[24];
} Parsed;

/* 1 if p[0:n] is 1 to max ASCII letters and digits (a generated transaction ID), else 0.
 * Other characters are left to the Python reader, which checks them by the pattern. */
static int
alnum_id(const unsigned char *p, Py_ssize_t n, Py_ssize_t max)
{
    if (n < 1 || n > max) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
            return 0;
        }
    }
    return 1;
}

/* The mirror alone, or after the origin entry, as the baggage of a carrier with no
 * transaction header: the ID is the mirror's value. 1 found, 0 decline, -1 error. */
static int
parse_mirror_only(PyObject *baggage, PyObject *prefix, Py_ssize_t max_baggage,
                  Py_ssize_t max_transaction, int with_origin, Parsed *out)
{
    const unsigned char *b = NULL, *m = NULL;
    Py_ssize_t b_size = 0, m_size = 0, start = 0;
    if ((b = ascii_of(baggage, &b_size)) == NULL || (m = ascii_of(prefix, &m_size)) == NULL
        || b_size > max_baggage) {
        return 0;
    }
    if (b_size > ORIGIN_PREFIX_SIZE && !origin_key(m, m_size)
        && memcmp(b, ORIGIN_PREFIX, (size_t)ORIGIN_PREFIX_SIZE) == 0) {
        const unsigned char *comma = memchr(b + ORIGIN_PREFIX_SIZE, ',',
                                            (size_t)(b_size - ORIGIN_PREFIX_SIZE));
        out->origin_size = comma == NULL ? 0 : (Py_ssize_t)(comma - b) - ORIGIN_PREFIX_SIZE;
        if (!with_origin || out->origin_size < 1 || out->origin_size > ORIGIN_MAX_DIGITS
            || !origin_digits(b + ORIGIN_PREFIX_SIZE, out->origin_size)) {
            return 0;
        }
        start = ORIGIN_PREFIX_SIZE + out->origin_size + 1;
    }
    Py_ssize_t tx_start = start + m_size;
    if (b_size - tx_start < 1 || memcmp(b + start, m, (size_t)m_size) != 0
        || !alnum_id(b + tx_start, b_size - tx_start, max_transaction)) {
        return 0;
    }
    out->transaction = PyUnicode_Substring(baggage, tx_start, b_size);
    if (out->transaction == NULL) {
        return -1;
    }
    out->mirrored = 1;
    return 1;
}

/* The baggage beside a transaction header: the mirror of that ID, alone or after the origin
 * entry. 1 found, 0 decline. */
static int
parse_mirror_of(PyObject *baggage, PyObject *prefix, PyObject *transaction,
                Py_ssize_t max_baggage, int with_origin, Parsed *out)
{
    Py_ssize_t size = PyUnicode_GET_LENGTH(baggage);
    Py_ssize_t prefix_size = PyUnicode_GET_LENGTH(prefix);
    Py_ssize_t mirror_size = prefix_size + PyUnicode_GET_LENGTH(transaction);
    if (size > max_baggage) {
        return 0;
    }
    if (size != mirror_size) {
        /* "hoptrace.origin_ms=<digits>," then the mirror, all ASCII. */
        const unsigned char *b = NULL, *m = NULL;
        Py_ssize_t b_size = 0, m_size = 0;
        out->origin_size = size - mirror_size - ORIGIN_PREFIX_SIZE - 1;
        if (!with_origin || out->origin_size < 1 || out->origin_size > ORIGIN_MAX_DIGITS
            || (b = ascii_of(baggage, &b_size)) == NULL
            || (m = ascii_of(prefix, &m_size)) == NULL
            /* a mirror key that is the origin's own key: Python's parse keeps one entry */
            || origin_key(m, m_size)
            || memcmp(b, ORIGIN_PREFIX, (size_t)ORIGIN_PREFIX_SIZE) != 0
            || !origin_digits(b + ORIGIN_PREFIX_SIZE, out->origin_size)
            || b[ORIGIN_PREFIX_SIZE + out->origin_size] != ',') {
            return 0;
        }
    }
    Py_ssize_t start = size - mirror_size; /* where the mirror begins */
    if (PyUnicode_Tailmatch(baggage, prefix, start, start + prefix_size, -1) != 1
        || PyUnicode_Tailmatch(baggage, transaction, start + prefix_size, size, 1) != 1) {
        PyErr_Clear();
        return 0;
    }
    out->mirrored = 1;
    return 1;
}

/*
 * The common case of a read, from the values found of the five headers (NULL: absent): 1
 * when all of it is valid (out filled; out->transaction a new reference or NULL), 0 to leave
 * the read to the Python reader (out->transaction NULL), -1 on an error (set).
 */
/* The ASCII text of an exact str, or (bytes_ok) of exact bytes, which gather_pairs checked
 * to be ASCII; NULL (no error set) for anything else. */
static const unsigned char *
text_of(PyObject *value, int bytes_ok, Py_ssize_t *length)
{
    if (bytes_ok && PyBytes_CheckExact(value)) {
        *length = PyBytes_GET_SIZE(value);
        return (const unsigned char *)PyBytes_AS_STRING(value);
    }
    return ascii_of(value, length);
}

static int
parse_found(PyObject *const *found, PyObject *prefix, Py_ssize_t max_baggage,
            Py_ssize_t max_transaction, int with_origin, int bytes_ok, Parsed *out)
{
    memset(out, 0, sizeof(*out));
    PyObject *traceparent = found[W_TRACEPARENT], *baggage = found[W_BAGGAGE];
    PyObject *transaction = found[W_TRANSACTION], *sent = found[W_SENT];
    Py_ssize_t length;
    if (found[W_TRACESTATE] != NULL) {
        return 0; /* a tracestate: the Python reader does it all */
    }
    if (traceparent != NULL) {
        const unsigned char *p = text_of(traceparent, bytes_ok, &length);
        if (p == NULL || length != 55 || p[0] != '0' || p[1] != '0' || p[2] != '-'
            || p[35] != '-' || p[52] != '-'
            || parse_hex(p + 3, 16, &out->trace_high) < 0
            || parse_hex(p + 19, 16, &out->trace_low) < 0
            || parse_hex(p + 36, 16, &out->span_id) < 0 || parse_hex(p + 53, 2, &out->flags) < 0
            || (out->trace_high == 0 && out->trace_low == 0) || out->span_id == 0) {
            return 0;
        }
        out->has_traceparent = 1;
    }
    if (transaction != NULL) {
        const unsigned char *p = ascii_of(transaction, &length);
        if (p == NULL || !alnum_id(p, length, max_transaction)) {
            return 0;
        }
    }
    if (sent != NULL) {
        const unsigned char *p = text_of(sent, bytes_ok, &length);
        if (p == NULL || length < 1 || length > 20) {
            return 0;
        }
        for (Py_ssize_t i = 0; i < length; i++) {
            if (p[i] < '0' || p[i] > '9') {
                return 0;
            }
        }
        memcpy(out->digits, p, (size_t)length);
        out->digits[length] = '\0';
        out->has_sent = 1;
    }
    if (baggage != NULL) {
        /* The common case: the transaction ID mirror "<key>=<transaction ID>", alone or after
         * the origin entry. (The transaction ID is ASCII alphanumeric, checked above.) */
        if (!PyUnicode_CheckExact(baggage) || !PyUnicode_CheckExact(prefix)) {
            return 0;
        }
        if (transaction == NULL) {
            /* No transaction header (hoptrace writes none by default). */
            return parse_mirror_only(baggage, prefix, max_baggage, max_transaction,
                                     with_origin, out);
        }
        if (!parse_mirror_of(baggage, prefix, transaction, max_baggage, with_origin, out)) {
            return 0;
        }
    }
    Py_XINCREF(transaction);
    out->transaction = transaction;
    return 1;
}

/* The trace ID and span ID as ints, and the send time (NULL where absent); -1 on an error. */
static int
parsed_ints(const Parsed *p, PyObject **trace_obj, PyObject **span_obj, PyObject **sent_obj)
{
    *trace_obj = *span_obj = *sent_obj = NULL;
    if (p->has_traceparent) {
        *trace_obj = int_from_halves(p->trace_high, p->trace_low);
        *span_obj = PyLong_FromUnsignedLongLong(p->span_id);
        if (*trace_obj == NULL || *span_obj == NULL) {
            return -1;
        }
    }
    if (p->has_sent) {
        *sent_obj = PyLong_FromString(p->digits, NULL, 10);
        if (*sent_obj == NULL) {
            return -1;
        }
    }
    return 0;
}

/* The origin entry's digits (a new str), or NULL with no error when there is none. */
static PyObject *
parsed_origin(const Parsed *p, PyObject *baggage)
{
    if (p->origin_size <= 0) {
        return NULL;
    }
    return PyUnicode_Substring(baggage, ORIGIN_PREFIX_SIZE, ORIGIN_PREFIX_SIZE + p->origin_size);
}

/* read_common's result from the found values: the 7-tuple, None to decline, NULL on error. */
static PyObject *
common_result(PyObject *const *found, PyObject *const *args, Py_ssize_t max_baggage,
              Py_ssize_t max_transaction, int with_origin, int bytes_ok)
{
    Parsed p;
    int status = parse_found(found, args[6], max_baggage, max_transaction, with_origin,
                             bytes_ok, &p);
    if (status <= 0) {
        if (status == 0) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    PyObject *trace_obj = NULL, *span_obj = NULL, *sent_obj = NULL, *origin_obj = NULL;
    PyObject *result = NULL;
    if (parsed_ints(&p, &trace_obj, &span_obj, &sent_obj) == 0) {
        origin_obj = parsed_origin(&p, found[W_BAGGAGE]);
        if (origin_obj != NULL || p.origin_size <= 0) {
            result = PyTuple_Pack(7, trace_obj != NULL ? trace_obj : Py_None,
                                  span_obj != NULL ? span_obj : Py_None,
                                  (p.flags & 1) ? Py_True : Py_False,
                                  p.transaction != NULL ? p.transaction : Py_None,
                                  p.mirrored ? Py_True : Py_False,
                                  sent_obj != NULL ? sent_obj : Py_None,
                                  origin_obj != NULL ? origin_obj : Py_None);
        }
    }
    Py_XDECREF(p.transaction);
    Py_XDECREF(trace_obj);
    Py_XDECREF(span_obj);
    Py_XDECREF(sent_obj);
    Py_XDECREF(origin_obj);
    return result;
}

/* The origin flag of a read (args[9], false when absent): 0 or 1, -1 on an error. */
static int
origin_flag(PyObject *const *args, Py_ssize_t nargs)
{
    return nargs == 10 ? PyObject_IsTrue(args[9]) : 0;
}

/* The limits of a read (args[7], args[8]); -1 on an error. */
static int
read_limits(PyObject *const *args, Py_ssize_t *max_baggage, Py_ssize_t *max_transaction)
{
    *max_baggage = PyLong_AsSsize_t(args[7]);
    *max_transaction = PyLong_AsSsize_t(args[8]);
    if ((*max_baggage == -1 || *max_transaction == -1) && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

/* Look the five headers up in an exact dict: 1 done, 0 decline (a lookup failed). */
static int
gather_dict(PyObject *carrier, PyObject *const *names, PyObject **found)
{
    for (int j = 0; j < N_WANTED; j++) {
        if (lookup(carrier, names[j], &found[j]) < 0) {
            return 0;
        }
    }
    return 1;
}

static void
release_found(PyObject **found)
{
    for (int j = 0; j < N_WANTED; j++) {
        Py_CLEAR(found[j]);
    }
}

/*
 * read_common(carrier, traceparent_key, tracestate_key, baggage_key, transaction_key,
 *             sent_key, mirror_prefix, max_baggage_bytes, max_transaction[, with_origin])
 *   -> (trace_id, span_id, sampled, transaction_id, mirrored, sent_ns, origin) or None
 *
 * The baggage may be the mirror alone, or, when with_origin is true, the pathway's origin entry
 * then the mirror: "hoptrace.origin_ms=<1 to 16 digits>," + mirror_prefix + transaction ID;
 * origin is then the digits (a str), else None.
 */
static PyObject *
read_common(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 && nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "read_common() takes 9 or 10 arguments");
        return NULL;
    }
    int with_origin = origin_flag(args, nargs);
    if (with_origin < 0) {
        return NULL;
    }
    if (!PyDict_CheckExact(args[0])) {
        Py_RETURN_NONE;
    }
    Py_ssize_t max_baggage, max_transaction;
    if (read_limits(args, &max_baggage, &max_transaction) < 0) {
        return NULL;
    }
    PyObject *found[N_WANTED] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *result;
    if (gather_dict(args[0], args + 1, found)) {
        result = common_result(found, args, max_baggage, max_transaction, with_origin, 0);
    }
    else {
        result = Py_None;
        Py_INCREF(result);
    }
    release_found(found);
    return result;
}

/* Kafka headers longer than this stay bytes in the Python reader (carriers._DECODE_LIMIT). */
#define PAIRS_DECODE_LIMIT 8192

/* 1 if the exact, ASCII str key equals the name (an exact ASCII str), else 0. */
static int
same_name(PyObject *key, const unsigned char *k, Py_ssize_t k_size, PyObject *name)
{
    Py_ssize_t n_size;
    const unsigned char *n;
    if (key == name) {
        return 1;
    }
    n = ascii_of(name, &n_size);
    return n != NULL && n_size == k_size && memcmp(n, k, (size_t)k_size) == 0;
}

/* A wanted header's value as the Python reader hands it on: an exact str as it is, exact bytes
 * of ASCII only as the same text. NULL, with no error set, for anything else (None, another
 * type, longer bytes, non-ASCII bytes): the Python reader then does the whole read. */
static PyObject *
pair_text(PyObject *value)
{
    if (PyUnicode_CheckExact(value)) {
        Py_INCREF(value);
        return value;
    }
    if (!PyBytes_CheckExact(value)) {
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(value);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(value);
    if (size > PAIRS_DECODE_LIMIT) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        if (p[i] & 0x80) {
            return NULL;
        }
    }
    PyObject *text = PyUnicode_New(size, 127);
    if (text == NULL) {
        PyErr_Clear();
        return NULL;
    }
    memcpy(PyUnicode_1BYTE_DATA(text), p, (size_t)size);
    return text;
}

/* 1 if p[0:n] is all ASCII, else 0 (eight bytes at a time). */
static int
all_ascii(const unsigned char *p, Py_ssize_t n)
{
    unsigned long long any = 0, word;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&word, p + i, 8);
        any |= word;
    }
    for (; i < n; i++) {
        any |= p[i];
    }
    return (any & 0x8080808080808080ULL) == 0;
}

/* A wanted header's value as gather_pairs keeps it: an exact str, or exact bytes of ASCII only
 * (the same text; see pair_text), as it is. NULL for anything else. */
static PyObject *
pair_value(PyObject *value)
{
    if (PyBytes_CheckExact(value)) {
        Py_ssize_t size = PyBytes_GET_SIZE(value);
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(value);
        if (size > PAIRS_DECODE_LIMIT || !all_ascii(p, size)) {
            return NULL;
        }
    }
    else if (!PyUnicode_CheckExact(value)) {
        return NULL;
    }
    Py_INCREF(value);
    return value;
}

/* Scan a list or tuple of (str, bytes) pairs for the five headers: 1 done, 0 decline (see
 * read_pairs), -1 on an error. found[] gets new references. */
static int
gather_pairs(PyObject *carrier, PyObject *const *names, PyObject **found)
{
    int is_list = PyList_CheckExact(carrier);
    Py_ssize_t length;
    for (int j = 0; j < N_WANTED; j++) {
        if (ascii_of(names[j], &length) == NULL) {
            return 0;
        }
    }
    /* A list's items are held while read: freeing memory may run code that changes the list. */
    for (Py_ssize_t i = 0;
         i < (is_list ? PyList_GET_SIZE(carrier) : PyTuple_GET_SIZE(carrier)); i++) {
        PyObject *item = is_list ? PyList_GET_ITEM(carrier, i) : PyTuple_GET_ITEM(carrier, i);
        Py_INCREF(item);
        int ok = PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2
                 && PyUnicode_CheckExact(PyTuple_GET_ITEM(item, 0));
        int wanted = -1;
        if (ok) {
            PyObject *key = PyTuple_GET_ITEM(item, 0);
            const unsigned char *k = ascii_of(key, &length);
            /* A key that is not ASCII is none of the (ASCII) names: skipped, as Python does. */
            for (int j = 0; k != NULL && j < N_WANTED; j++) {
                if (same_name(key, k, length, names[j])) {
                    wanted = j;
                    break;
                }
            }
            if (wanted >= 0) {
                if (found[wanted] != NULL) {
                    ok = 0; /* seen twice: the Python reader rejects it, with its reason */
                }
                else {
                    found[wanted] = pair_value(PyTuple_GET_ITEM(item, 1));
                    ok = found[wanted] != NULL;
                }
            }
        }
        Py_DECREF(item);
        if (!ok) {
            return 0;
        }
    }
    /* The values kept as objects, as text; the traceparent and the send time stay bytes, read
     * as ASCII where they are (parse_found's bytes_ok). */
    static const int as_text[] = {W_TRACESTATE, W_BAGGAGE, W_TRANSACTION};
    for (int j = 0; j < 3; j++) {
        PyObject *value = found[as_text[j]];
        if (value != NULL && PyBytes_CheckExact(value)) {
            found[as_text[j]] = pair_text(value);
            Py_DECREF(value);
            if (found[as_text[j]] == NULL) {
                return 0;
            }
        }
    }
    return 1;
}

/*
 * read_pairs(carrier, <read_common's other arguments>) -> read_common's result, or None
 *
 * read_common for a list or tuple of (str, bytes) pairs, the Kafka clients' headers: each
 * wanted header once, as an exact str or ASCII bytes of at most PAIRS_DECODE_LIMIT. The Python
 * reader (carriers.read_headers) gives the same values for such a list. None for anything
 * else: another carrier type, an item that is not an exact 2-tuple, a key that is not an exact
 * str, a wanted header seen twice, a value of another type or encoding, a header name that is
 * not ASCII text.
 */
static PyObject *
read_pairs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 && nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "read_pairs() takes 9 or 10 arguments");
        return NULL;
    }
    PyObject *carrier = args[0];
    if (!PyList_CheckExact(carrier) && !PyTuple_CheckExact(carrier)) {
        Py_RETURN_NONE;
    }
    PyObject *found[N_WANTED] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *result = NULL;
    int status = gather_pairs(carrier, args + 1, found);
    if (status == 0) {
        result = Py_None;
        Py_INCREF(result);
    }
    else if (status > 0) {
        int with_origin = origin_flag(args, nargs);
        Py_ssize_t max_baggage, max_transaction;
        if (with_origin >= 0 && read_limits(args, &max_baggage, &max_transaction) == 0) {
            result = common_result(found, args, max_baggage, max_transaction, with_origin, 1);
        }
    }
    release_found(found);
    return result;
}

/*
 * read_incoming(carrier, spec) -> (span_context, transaction_id, baggage, sent_ns) or None
 *
 * read_common (an exact dict) or read_pairs (an exact list or tuple) and what the Python
 * reader builds from their result, in one call. spec is the tuple
 * (traceparent_key, tracestate_key, baggage_key, transaction_key, sent_key, mirror_prefix,
 *  max_baggage_bytes, max_transaction, with_origin, SpanContext, sampled_flags,
 *  unsampled_flags, trace_state, mirror_key, origin_key):
 * the span context is tuple.__new__(SpanContext, (trace_id, span_id, True, flags,
 * trace_state, True)), for an OTel whose SpanContext is that tuple (the caller checks); the
 * baggage is {mirror_key: transaction_id}, or {origin_key: origin, mirror_key: transaction_id}.
 * None where read_common would give None, and for any other carrier.
 */
#define SPEC_SIZE 15

static PyObject *
span_context_of(PyObject *const *spec, const Parsed *p, PyObject *trace_obj, PyObject *span_obj)
{
    /* What tuple.__new__(SpanContext, items) makes (tuple_subtype_new): the subtype's
     * instance of 6 items. */
    PyTypeObject *type = (PyTypeObject *)spec[9];
    PyObject *sc = type->tp_alloc(type, 6);
    if (sc == NULL) {
        return NULL;
    }
    PyObject *items[6] = {trace_obj, span_obj, Py_True, (p->flags & 1) ? spec[10] : spec[11],
                          spec[12], Py_True};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(sc, i, items[i]);
    }
    return sc;
}

static PyObject *
baggage_of(PyObject *const *spec, const Parsed *p, PyObject *baggage)
{
    if (!p->mirrored) {
        Py_RETURN_NONE;
    }
    PyObject *entries = PyDict_New();
    if (entries == NULL) {
        return NULL;
    }
    PyObject *origin = parsed_origin(p, baggage);
    if ((origin == NULL && p->origin_size > 0)
        || (origin != NULL && PyDict_SetItem(entries, spec[14], origin) < 0)
        || PyDict_SetItem(entries, spec[13], p->transaction) < 0) {
        Py_XDECREF(origin);
        Py_DECREF(entries);
        return NULL;
    }
    Py_XDECREF(origin);
    return entries;
}

static PyObject *
incoming_result(PyObject *const *spec, PyObject *const *found, Py_ssize_t max_baggage,
                Py_ssize_t max_transaction, int with_origin, int bytes_ok)
{
    Parsed p;
    int status = parse_found(found, spec[5], max_baggage, max_transaction, with_origin,
                             bytes_ok, &p);
    if (status <= 0) {
        if (status == 0) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    PyObject *trace_obj = NULL, *span_obj = NULL, *sent_obj = NULL, *sc = NULL;
    PyObject *entries = NULL, *result = NULL;
    if (parsed_ints(&p, &trace_obj, &span_obj, &sent_obj) == 0
        && (trace_obj == NULL || (sc = span_context_of(spec, &p, trace_obj, span_obj)) != NULL)
        && (entries = baggage_of(spec, &p, found[W_BAGGAGE])) != NULL) {
        result = PyTuple_Pack(4, sc != NULL ? sc : Py_None,
                              p.transaction != NULL ? p.transaction : Py_None, entries,
                              sent_obj != NULL ? sent_obj : Py_None);
    }
    Py_XDECREF(p.transaction);
    Py_XDECREF(trace_obj);
    Py_XDECREF(span_obj);
    Py_XDECREF(sent_obj);
    Py_XDECREF(sc);
    Py_XDECREF(entries);
    return result;
}

static PyObject *
read_incoming(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_CheckExact(args[1]) || PyTuple_GET_SIZE(args[1]) != SPEC_SIZE
        || !PyType_Check(PyTuple_GET_ITEM(args[1], 9))
        || !PyType_IsSubtype((PyTypeObject *)PyTuple_GET_ITEM(args[1], 9), &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "read_incoming() takes a carrier and a read spec");
        return NULL;
    }
    PyObject *carrier = args[0];
    PyObject *const *spec = &PyTuple_GET_ITEM(args[1], 0);
    int with_origin = PyObject_IsTrue(spec[8]);
    Py_ssize_t max_baggage, max_transaction;
    if (with_origin < 0) {
        return NULL;
    }
    max_baggage = PyLong_AsSsize_t(spec[6]);
    max_transaction = PyLong_AsSsize_t(spec[7]);
    if ((max_baggage == -1 || max_transaction == -1) && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *found[N_WANTED] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *result = NULL;
    int status, pairs = 0;
    if (PyDict_CheckExact(carrier)) {
        status = gather_dict(carrier, spec, found);
    }
    else if (PyList_CheckExact(carrier) || PyTuple_CheckExact(carrier)) {
        status = gather_pairs(carrier, spec, found);
        pairs = 1;
    }
    else {
        status = 0;
    }
    if (status == 0) {
        result = Py_None;
        Py_INCREF(result);
    }
    else if (status > 0) {
        result = incoming_result(spec, found, max_baggage, max_transaction, with_origin,
                                 pairs);
    }
    release_found(found);
    return result;
}

static void
put_hex(char *out, unsigned long long value, int digits)
{
    for (int i = digits - 1; i >= 0; i--) {
        out[i] = hex_digits[value & 0xF];
        value >>= 4;
    }
}

/* An exact int in [0, 2**bits) (bits 64 or 128) as its high and low 64-bit halves; -1 (no
 * error set) for anything else. */
static int
halves_of(PyObject *value, int bits, unsigned long long *high, unsigned long long *low)
{
    if (!PyLong_CheckExact(value)) {
        return -1;
    }
    int overflow = 0;
    long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (small == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && small < 0)) {
        return -1;
    }
    if (overflow == 0) {
        *high = 0;
        *low = (unsigned long long)small;
        return 0;
    }
#if PY_VERSION_HEX < 0x030D0000
    /* Both halves in one conversion (OverflowError: negative, or 2**128 or more). */
    unsigned char bytes[16];
    if (_PyLong_AsByteArray((PyLongObject *)value, bytes, 16, 1, 0) < 0) {
        PyErr_Clear();
        return -1;
    }
    unsigned long long halves[2] = {0, 0};
    for (int i = 15; i >= 8; i--) {
        halves[1] = (halves[1] << 8) | bytes[i];
        halves[0] = (halves[0] << 8) | bytes[i - 8];
    }
    *high = halves[1];
    *low = halves[0];
    return bits == 64 && *high != 0 ? -1 : 0;
#else
    *low = PyLong_AsUnsignedLongLongMask(value);
    PyObject *shift = PyLong_FromLong(64);
    if (shift == NULL) {
        PyErr_Clear();
        return -1;
    }
    PyObject *top = PyNumber_Rshift(value, shift);
    Py_DECREF(shift);
    if (top == NULL) {
        PyErr_Clear();
        return -1;
    }
    /* OverflowError when the value is 2**128 or more. */
    *high = PyLong_AsUnsignedLongLong(top);
    Py_DECREF(top);
    if (*high == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (bits == 64 && *high != 0) {
        return -1;
    }
    return 0;
#endif
}

static PyObject *
now_ns_text(void)
{
#if defined(CLOCK_REALTIME) && !defined(_WIN32)
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) == 0) {
        char digits[24];  /* (the decimal digits of ns, written backwards: no snprintf) */
        char *end = digits + sizeof(digits), *start = end;
        unsigned long long ns =
            (unsigned long long)now.tv_sec * 1000000000ULL + (unsigned long long)now.tv_nsec;
        do {
            *--start = (char)('0' + ns % 10);
            ns /= 10;
        } while (ns != 0);
        PyObject *text = PyUnicode_New(end - start, 127);
        if (text != NULL) {
            memcpy(PyUnicode_DATA(text), start, (size_t)(end - start));
        }
        return text;
    }
#endif
    if (time_ns_func == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no clock");
        return NULL;
    }
    PyObject *ns = PyObject_CallNoArgs(time_ns_func);
    if (ns == NULL) {
        return NULL;
    }
    PyObject *text = PyObject_Str(ns);
    Py_DECREF(ns);
    return text;
}

/*
 * The baggage "hoptrace.origin_ms=<origin>," + mirror_prefix + transaction (what the Python
 * writer's _encode_baggage gives for the origin entry and the mirror), or NULL with no error set
 * when a part is not ASCII text of that shape. (NULL with an error set: out of memory.)
 */
static PyObject *
origin_baggage(PyObject *origin, PyObject *mirror_prefix, PyObject *transaction)
{
    Py_ssize_t origin_size = 0, prefix_size = 0, tx_size = 0;
    const unsigned char *o = ascii_of(origin, &origin_size);
    const unsigned char *m = ascii_of(mirror_prefix, &prefix_size);
    const unsigned char *t = ascii_of(transaction, &tx_size);
    if (o == NULL || m == NULL || t == NULL || !origin_digits(o, origin_size)) {
        return NULL;
    }
    Py_ssize_t size = ORIGIN_PREFIX_SIZE + origin_size + 1 + prefix_size + tx_size;
    PyObject *text = PyUnicode_New(size, 127);
    if (text == NULL) {
        return NULL;
    }
    char *out = (char *)PyUnicode_DATA(text);
    memcpy(out, ORIGIN_PREFIX, (size_t)ORIGIN_PREFIX_SIZE);
    out += ORIGIN_PREFIX_SIZE;
    memcpy(out, o, (size_t)origin_size);
    out += origin_size;
    *out++ = ',';
    memcpy(out, m, (size_t)prefix_size);
    memcpy(out + prefix_size, t, (size_t)tx_size);
    return text;
}

/* 1 if origin_baggage() can write (origin, mirror_prefix, transaction) as the Python writer
 * would; 0 if not (a mirror under the origin's own key is one entry in Python). */
static int
origin_ok(PyObject *origin, PyObject *mirror_prefix, PyObject *transaction)
{
    Py_ssize_t origin_size = 0, m_size = 0, size = 0;
    const unsigned char *o = ascii_of(origin, &origin_size);
    const unsigned char *m = ascii_of(mirror_prefix, &m_size);
    return o != NULL && origin_digits(o, origin_size) && m != NULL && !origin_key(m, m_size)
           && ascii_of(transaction, &size) != NULL;
}

/* values[key] = text for a dict; for a list, append (key, text as its UTF-8 bytes), the pair
 * that str.encode() makes of it. 0, or -1 with an exception set. */
static int
put(PyObject *values, PyObject *key, PyObject *text)
{
    if (PyDict_CheckExact(values)) {
        return PyDict_SetItem(values, key, text);
    }
    PyObject *encoded = PyUnicode_AsUTF8String(text);
    if (encoded == NULL) {
        return -1;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(encoded);
        return -1;
    }
    Py_INCREF(key);
    PyTuple_SET_ITEM(pair, 0, key);
    PyTuple_SET_ITEM(pair, 1, encoded);
    int status = PyList_Append(values, pair);
    Py_DECREF(pair);
    return status;
}

/* For a list of pairs: 1 if the names to write are str, each unlike the others (what a dict
 * would keep of them: one entry per name); 0 if not (nothing is written then). */
static int
distinct_names(PyObject *const *names, int count)
{
    for (int i = 0; i < count; i++) {
        if (!PyUnicode_CheckExact(names[i])) {
            return 0;
        }
        for (int j = 0; j < i; j++) {
            if (PyUnicode_Compare(names[i], names[j]) == 0) {
                return 0;
            }
        }
    }
    return 1;
}

/*
 * Store traceparent (if not NULL; a new reference, consumed), the transaction ID (if its key,
 * keys[1], is not None), the baggage (if mirror_prefix is not None: the mirror, after the
 * origin entry if origin is not None) and the send time (if sent_key is not None) into the
 * dict values (or, as (name, UTF-8 bytes) pairs, onto the list values), in that order. keys:
 * traceparent, transaction, baggage. Returns 0, or -1 with an exception set. The caller
 * checked origin with origin_ok() (and, for a list, the names with distinct_names()).
 */
static int
store(PyObject *values, PyObject *traceparent, PyObject *const *keys, PyObject *transaction,
      PyObject *mirror_prefix, PyObject *sent_key, PyObject *origin)
{
    PyObject *mirror = NULL, *sent = NULL;
    int status = -1;
    if (mirror_prefix != Py_None) {
        mirror = origin != Py_None ? origin_baggage(origin, mirror_prefix, transaction)
                                   : PyUnicode_Concat(mirror_prefix, transaction);
        if (mirror == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_SystemError, "hoptrace._speedups: unchecked origin");
            }
            goto done;
        }
    }
    if (sent_key != Py_None) {
        sent = now_ns_text();
        if (sent == NULL) {
            goto done;
        }
    }
    if ((traceparent != NULL && put(values, keys[0], traceparent) < 0)
        || (keys[1] != Py_None && put(values, keys[1], transaction) < 0)
        || (mirror != NULL && put(values, keys[2], mirror) < 0)
        || (sent != NULL && put(values, sent_key, sent) < 0)) {
        goto done;
    }
    status = 0;
done:
    Py_XDECREF(traceparent);
    Py_XDECREF(mirror);
    Py_XDECREF(sent);
    return status;
}

static PyObject *
format_traceparent(unsigned long long trace_high, unsigned long long trace_low,
                   unsigned long long span_id, int sampled)
{
    char text[55];
    memcpy(text, "00-", 3);
    put_hex(text + 3, trace_high, 16);
    put_hex(text + 19, trace_low, 16);
    text[35] = '-';
    put_hex(text + 36, span_id, 16);
    memcpy(text + 52, sampled ? "-01" : "-00", 3);
    return PyUnicode_FromStringAndSize(text, 55);
}

static int
mirror_ok(PyObject *mirror_prefix)
{
    return mirror_prefix == Py_None || PyUnicode_CheckExact(mirror_prefix);
}

/* The optional origin argument is usable: None, or (with a mirror) a str origin_ok() takes. */
static int
origin_arg_ok(PyObject *origin, PyObject *mirror_prefix, PyObject *transaction)
{
    return origin == Py_None
           || (mirror_prefix != Py_None && origin_ok(origin, mirror_prefix, transaction));
}

/*
 * write_common(values, trace_id, span_id, sampled, traceparent_key, transaction_key,
 *              transaction_id, baggage_key, mirror_prefix, sent_key[, origin]) -> bool
 *
 * trace_id None writes no traceparent; transaction_key None no transaction header (the baggage
 * mirror carries the ID: the caller never passes None for both); mirror_prefix None no
 * baggage; sent_key None no send time; origin (1 to 16 ASCII digits, with a mirror) puts the
 * pathway's origin entry before the mirror in the baggage. Writes, in the Python writer's order, traceparent, transaction ID, the
 * baggage and the send time into the dict ``values``; or, when ``values`` is an empty list,
 * appends them to it as the (name, UTF-8 bytes) pairs a Kafka client sends (False when two
 * of the names to write are equal or one is not a str, as a dict would keep one entry; or
 * when the transaction ID or the mirror prefix is not ASCII).
 */
static PyObject *
write_common(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10 && nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "write_common() takes 10 or 11 arguments");
        return NULL;
    }
    PyObject *values = args[0], *trace_id = args[1], *span_id = args[2];
    PyObject *transaction = args[6];
    PyObject *origin = nargs == 11 ? args[10] : Py_None;
    PyObject *keys[3] = {args[4], args[5], args[7]};
    if (!(PyDict_CheckExact(values) || (PyList_CheckExact(values) && PyList_GET_SIZE(values) == 0))
        || !PyUnicode_CheckExact(transaction)
        || !mirror_ok(args[8]) || !origin_arg_ok(origin, args[8], transaction)) {
        Py_RETURN_FALSE;
    }
    if (!PyDict_CheckExact(values)) {
        /* ASCII values only, so that no encoding can fail half-way through the list. */
        Py_ssize_t size = 0;
        if (ascii_of(transaction, &size) == NULL
            || (args[8] != Py_None && ascii_of(args[8], &size) == NULL)) {
            Py_RETURN_FALSE;
        }
        PyObject *names[4];
        int count = 0;
        if (trace_id != Py_None) {
            names[count++] = keys[0];
        }
        if (keys[1] != Py_None) {
            names[count++] = keys[1];
        }
        if (args[8] != Py_None) {
            names[count++] = keys[2];
        }
        if (args[9] != Py_None) {
            names[count++] = args[9];
        }
        if (!distinct_names(names, count)) {
            Py_RETURN_FALSE;
        }
    }
    PyObject *traceparent = NULL;
    if (trace_id != Py_None) {
        unsigned long long trace_high, trace_low, span_high, span_low;
        if (halves_of(trace_id, 128, &trace_high, &trace_low) < 0
            || halves_of(span_id, 64, &span_high, &span_low) < 0) {
            Py_RETURN_FALSE;
        }
        int sampled = PyObject_IsTrue(args[3]);
        if (sampled < 0) {
            return NULL;
        }
        traceparent = format_traceparent(trace_high, trace_low, span_low, sampled);
        if (traceparent == NULL) {
            return NULL;
        }
    }
    if (store(values, traceparent, keys, transaction, args[8], args[9], origin) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

/*
 * pairs_of(values) -> list | None
 *
 * [(key, str.encode(value)) for key, value in values.items()] for an exact dict whose values
 * are all str: the header pairs a Kafka client sends, each value as its UTF-8 bytes (strict:
 * a lone surrogate raises UnicodeEncodeError, as str.encode does). None, with nothing built,
 * for anything else (the Python comprehension then runs, with its own errors).
 */
static PyObject *
pairs_of(PyObject *module, PyObject *values)
{
    if (!PyDict_CheckExact(values)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t size = PyDict_GET_SIZE(values), pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(values, &pos, &key, &value)) {
        if (!PyUnicode_Check(value)) {
            Py_RETURN_NONE;
        }
    }
    PyObject *pairs = PyList_New(size);
    if (pairs == NULL) {
        return NULL;
    }
    pos = 0;
    /* (Nothing below runs Python code but a collection a new object may start: should that
     * change the dict's size, the Python comprehension does the whole conversion instead.) */
    while (i < size && PyDict_Next(values, &pos, &key, &value)) {
        PyObject *encoded = PyUnicode_Check(value) ? PyUnicode_AsUTF8String(value) : NULL;
        if (encoded == NULL) {
            Py_DECREF(pairs);
            if (PyErr_Occurred()) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(encoded);
            Py_DECREF(pairs);
            return NULL;
        }
        Py_INCREF(key);
        PyTuple_SET_ITEM(pair, 0, key);
        PyTuple_SET_ITEM(pair, 1, encoded);
        PyList_SET_ITEM(pairs, i++, pair);
    }
    if (i != size || PyDict_GET_SIZE(values) != size) {
        Py_DECREF(pairs);
        Py_RETURN_NONE;
    }
    return pairs;
}

/* The decimal digits of value (an optional '-' first) written backwards from end; returns
 * where they start. */
static char *
decimal_backwards(char *end, long long value)
{
    unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value
                                             : (unsigned long long)value;
    do {
        *--end = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude != 0);
    if (value < 0) {
        *--end = '-';
    }
    return end;
}

/*
 * record_id(topic, partition, offset) -> str | None
 *
 * f"{topic}-{partition}@{offset}", a Kafka record's message ID, for an ASCII exact str topic
 * and exact ints that fit in 64 bits; None for anything else (the f-string then runs).
 */
static PyObject *
record_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "record_id() takes 3 arguments");
        return NULL;
    }
    Py_ssize_t topic_size = 0;
    const unsigned char *topic = ascii_of(args[0], &topic_size);
    if (topic == NULL || !PyLong_CheckExact(args[1]) || !PyLong_CheckExact(args[2])) {
        Py_RETURN_NONE;
    }
    int overflow = 0;
    long long partition = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (overflow != 0 || (partition == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    long long offset = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (overflow != 0 || (offset == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    char digits[48]; /* '-', up to 20 characters, '@', up to 20 characters */
    char *end = digits + sizeof(digits);
    char *start = decimal_backwards(end, offset);
    *--start = '@';
    start = decimal_backwards(start, partition);
    *--start = '-';
    Py_ssize_t tail = (Py_ssize_t)(end - start);
    PyObject *text = PyUnicode_New(topic_size + tail, 127);
    if (text == NULL) {
        return NULL;
    }
    char *out = (char *)PyUnicode_DATA(text);
    memcpy(out, topic, (size_t)topic_size);
    memcpy(out + topic_size, start, (size_t)tail);
    return text;
}

static unsigned long long
big_endian(const unsigned char *p)
{
    unsigned long long value = 0;
    for (int i = 0; i < 8; i++) {
        value = (value << 8) | p[i];
    }
    return value;
}

/*
 * mint_common(values, random, traceparent_key, transaction_key, transaction_id, baggage_key,
 *             mirror_prefix, sent_key[, origin]) -> bool
 *
 * Like write_common for a new, unsampled trace whose IDs are the first 16 (trace) and next 8
 * (span) bytes of ``random``, read big-endian. transaction_id None takes the transaction ID
 * from the next 16 bytes, as 32 lowercase hex characters. False (nothing written) when an ID
 * would be zero or an argument is not of the expected type.
 */
static PyObject *
mint_common(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 && nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "mint_common() takes 8 or 9 arguments");
        return NULL;
    }
    PyObject *values = args[0], *random = args[1], *transaction = args[4];
    PyObject *origin = nargs == 9 ? args[8] : Py_None;
    PyObject *keys[3] = {args[2], args[3], args[5]};
    if (!PyDict_CheckExact(values) || !PyBytes_CheckExact(random) || !mirror_ok(args[6])) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(random);
    if (transaction == Py_None ? size != 40 : (size != 24 || !PyUnicode_CheckExact(transaction))) {
        Py_RETURN_FALSE;
    }
    /* (A minted transaction ID is ASCII hex: only the origin and the mirror need checking.) */
    if (origin != Py_None
        && (args[6] == Py_None || !origin_ok(origin, args[6], transaction == Py_None
                                                            ? origin : transaction))) {
        Py_RETURN_FALSE;
    }
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(random);
    unsigned long long trace_high = big_endian(bytes), trace_low = big_endian(bytes + 8);
    unsigned long long span_id = big_endian(bytes + 16);
    if ((trace_high == 0 && trace_low == 0) || span_id == 0) {
        Py_RETURN_FALSE;
    }
    PyObject *traceparent = format_traceparent(trace_high, trace_low, span_id, 0);
    if (traceparent == NULL) {
        return NULL;
    }
    if (transaction == Py_None) {
        char text[32];
        put_hex(text, big_endian(bytes + 24), 16);
        put_hex(text + 16, big_endian(bytes + 32), 16);
        transaction = PyUnicode_FromStringAndSize(text, 32);
        if (transaction == NULL) {
            Py_DECREF(traceparent);
            return NULL;
        }
    }
    else {
        Py_INCREF(transaction);
    }
    int status = store(values, traceparent, keys, transaction, args[6], args[7], origin);
    Py_DECREF(transaction);
    if (status < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

/* ---- dropped_child, start_lazy, dropped_span: _sdk_spans.Starter's shortcuts in one call --
 *
 * The same steps in the same order as the Python methods (every read of the tracer, its
 * sampler and its ID generator, every call and comparison is the one they make), for an API
 * whose SpanContext is the 6-tuple. The starter's own fields, which only the Starter writes,
 * are read from its _state tuple in one lookup. What these need from Python is set once by
 * configure_dropped() and configure_lazy(); until then they are refused. Anything the fast
 * paths do not cover goes to the Python method, before any side effect.
 */

static PyObject *dc_span_context = NULL;  /* opentelemetry.trace.SpanContext */
static PyObject *dc_pending_ids = NULL;   /* _sdk_spans.PendingIds */
static PyObject *dc_flags = NULL;         /* _sdk_spans._FLAGS (a 4-tuple) */
static PyObject *dc_default_state = NULL; /* DEFAULT_TRACE_STATE */
static PyObject *dc_trace_api = NULL;     /* the opentelemetry.trace module */
static PyObject *dc_nrs = NULL;           /* _NRS */
static PyObject *dc_nrs_init = NULL;      /* _NRS_INIT (None: always call the class) */
static PyObject *dc_random_flag = NULL;   /* _RANDOM_FLAG */
static PyObject *dc_drop = NULL;          /* Decision.DROP */
static PyObject *dc_span_id_max = NULL;   /* _SPAN_ID_MAX */
static PyObject *dc_python = NULL;        /* Starter.dropped_child, for what this does not cover */
static size_t dc_span_bits = 0;           /* 64 when _SPAN_ID_MAX is 2**64 - 1 */
/* Set by configure_lazy(): */
static PyObject *dc_context_type = NULL;  /* opentelemetry.context.Context */
static PyObject *dc_span_key = NULL;      /* the Context key of the current span */
static PyObject *dc_lazy_python = NULL;   /* Starter.start_lazy */
static PyObject *dc_trace_id_max = NULL;  /* _TRACE_ID_MAX */
static size_t dc_trace_bits = 0;          /* 128 when _TRACE_ID_MAX is 2**128 - 1 */

static size_t dc_ones(PyObject *most);
static PyObject *ri_call(PyObject *generator, int which);
/* Set by configure_spans(): */
static PyObject *dc_spans_module = NULL;  /* hoptrace.core.spans (its _fast_cache, fast_starter) */
static PyObject *dc_settings_module = NULL; /* hoptrace.core.settings (its _current) */
static PyObject *dc_sp_trace_api = NULL;  /* the opentelemetry.trace module */
static PyObject *dc_sp_span_context = NULL; /* opentelemetry.trace.SpanContext */
static PyObject *dc_internal_error = NULL; /* diagnostics.internal_error */
static PyObject *dc_failed = NULL;        /* hop._FAILED */
static PyObject *dc_fast_cache = NULL;    /* spans._fast_cache: [settings, provider, starter] */
static PyObject *dc_sdk_holder = NULL;    /* spans._sdk_dropped: [_sdk_spans or None] */

/* Starter._state: (tracer, sampler, drops, ratio, gated, gate_inline, random_flag,
 * noop_metrics, shortcuts, fixed_ids), rebuilt by the Starter whenever one of them changes. */
enum {
    ST_TRACER, ST_SAMPLER, ST_DROPS, ST_RATIO, ST_GATED, ST_GATE_INLINE, ST_RANDOM_FLAG,
    ST_NOOP_METRICS, ST_SHORTCUTS, ST_FIXED_IDS, ST_SIZE
};

static PyObject *
configure_dropped(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "configure_dropped takes 11 arguments");
        return NULL;
    }
    if (!PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &PyTuple_Type)
            || !PyType_Check(args[1]) || !PyTuple_Check(args[2]) || PyTuple_GET_SIZE(args[2]) != 4
            || !PyType_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "configure_dropped: unexpected argument types");
        return NULL;
    }
    PyObject **slots[11] = {&dc_span_context, &dc_pending_ids, &dc_flags, &dc_default_state,
                            &dc_trace_api, &dc_nrs, &dc_nrs_init, &dc_random_flag, &dc_drop,
                            &dc_span_id_max, &dc_python};
    for (int i = 0; i < 11; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    dc_span_bits = dc_ones(dc_span_id_max);
    Py_RETURN_NONE;
}

static PyObject *
configure_lazy(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "configure_lazy takes 4 arguments");
        return NULL;
    }
    if (!PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &PyDict_Type)
            || !PyUnicode_CheckExact(args[1]) || !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "configure_lazy: unexpected argument types");
        return NULL;
    }
    PyObject **slots[4] = {&dc_context_type, &dc_span_key, &dc_lazy_python, &dc_trace_id_max};
    for (int i = 0; i < 4; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    dc_trace_bits = dc_ones(dc_trace_id_max);
    Py_RETURN_NONE;
}

/* configure_spans(spans module, settings module, opentelemetry.trace, SpanContext,
 * diagnostics.internal_error, hop._FAILED, spans._fast_cache, spans._sdk_dropped): what
 * dropped_span, dropped_hop and lazy_span need. The two lists are changed in place, never
 * rebound. */
static PyObject *
configure_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "configure_spans takes 8 arguments");
        return NULL;
    }
    if (!PyList_CheckExact(args[6]) || PyList_GET_SIZE(args[6]) != 3
            || !PyList_CheckExact(args[7]) || PyList_GET_SIZE(args[7]) != 1) {
        PyErr_SetString(PyExc_TypeError, "configure_spans: unexpected caches");
        return NULL;
    }
    if (!PyModule_Check(args[0]) || !PyModule_Check(args[1]) || !PyModule_Check(args[2])
            || !PyType_Check(args[3])
            || !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type)
            || !PyCallable_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "configure_spans: unexpected argument types");
        return NULL;
    }
    PyObject **slots[8] = {&dc_spans_module, &dc_settings_module, &dc_sp_trace_api,
                           &dc_sp_span_context, &dc_internal_error, &dc_failed, &dc_fast_cache,
                           &dc_sdk_holder};
    for (int i = 0; i < 8; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    Py_RETURN_NONE;
}

/* getattr(obj, name) with a C string name interned once. */
#define DC_NAME(name) static PyObject *dc_name_##name = NULL;
DC_NAME(sampler) DC_NAME(_state) DC_NAME(_tracer_config)
DC_NAME(is_enabled) DC_NAME(_is_enabled) DC_NAME(id_generator) DC_NAME(inner)
DC_NAME(is_trace_id_random) DC_NAME(generate_span_id) DC_NAME(generate_trace_id)
DC_NAME(_tracer_metrics) DC_NAME(start_span) DC_NAME(NonRecordingSpan)
DC_NAME(__init__) DC_NAME(_context) DC_NAME(context) DC_NAME(INVALID_SPAN_CONTEXT)
DC_NAME(TRACE_ID_LIMIT) DC_NAME(_bound) DC_NAME(start) DC_NAME(get_span_context)
DC_NAME(_current) DC_NAME(_TRACER_PROVIDER) DC_NAME(fast_starter)
DC_NAME(dropped_child_of) DC_NAME(start_lazy_of) DC_NAME(dropped_child)
DC_NAME(start_lazy)

static PyObject *
dc_intern(const char *text, PyObject **cache)
{
    if (*cache == NULL) {
        *cache = PyUnicode_InternFromString(text);
    }
    return *cache;
}

static PyObject *
dc_attr(PyObject *obj, const char *text, PyObject **cache)
{
    PyObject *name = dc_intern(text, cache);
    return name == NULL ? NULL : PyObject_GetAttr(obj, name);
}

/* One module attribute's last read, kept while its module's dict is unchanged. PEP 509's
 * version tag (CPython 3.10 to 3.13 with the GIL) changes with every change to a dict (a new
 * value for any key, a key added or deleted) and is never given twice in an interpreter, so
 * the same dict with the same tag holds the same value under the name: what the lookup would
 * find, without it. The dict and the value are held, so neither identity is reused while
 * kept. Other builds read the dict every time. */
typedef struct {
    PyObject *dict;
    PyObject *name;   /* (not held: an interned name kept by its dc_name_ static) */
    PyObject *value;
    uint64_t tag;
} DcSlot;

#if PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define DC_TAGGED 1
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  /* (deprecated in 3.12, not gone) */
#endif
static inline uint64_t
dc_tag(PyObject *dict)
{
    return ((PyDictObject *)dict)->ma_version_tag;
}
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

/* dict[name] (new reference), NULL with no error set when the exact dict ``dict`` has no such
 * key; ``slot`` (or NULL) keeps what it gave (above). */
static PyObject *
dc_dict_get(PyObject *dict, PyObject *name, DcSlot *slot)
{
#ifdef DC_TAGGED
    /* (the tag before the lookup: a change during it, by a key's __eq__, leaves the slot
     * behind the dict, so the next read looks again) */
    uint64_t tag = dc_tag(dict);
    if (slot != NULL && slot->dict == dict && slot->tag == tag && slot->name == name) {
        return Py_NewRef(slot->value);
    }
#endif
    PyObject *value = PyDict_GetItemWithError(dict, name);
    if (value == NULL) {
        return NULL;
    }
#ifdef DC_TAGGED
    if (slot != NULL) {  /* (the old pair released last: its finalizers may run code) */
        PyObject *old_dict = slot->dict, *old_value = slot->value;
        slot->dict = Py_NewRef(dict);
        slot->value = Py_NewRef(value);
        slot->name = name;
        slot->tag = tag;
        Py_XDECREF(old_dict);
        Py_XDECREF(old_value);
        return Py_NewRef(slot->value);
    }
#endif
    return Py_NewRef(value);
}

/* getattr(module, name), from the module's dict when the name is there (what the module's
 * getattr finds first, without the type lookups), else the getattr itself; ``slot`` (or NULL)
 * keeps what the dict gave. */
static PyObject *
dc_module_get(PyObject *module, PyObject *name, DcSlot *slot)
{
    if (PyModule_CheckExact(module)) {
        PyObject *value = dc_dict_get(PyModule_GetDict(module), name, slot);
        if (value != NULL || PyErr_Occurred()) {
            return value;
        }
    }
    return PyObject_GetAttr(module, name);
}

static PyObject *
dc_module_attr(PyObject *module, const char *text, PyObject **cache, DcSlot *slot)
{
    PyObject *name = dc_intern(text, cache);
    return name == NULL ? NULL : dc_module_get(module, name, slot);
}

/* module_attr(module, name): getattr(module, name) through a slot of its own (the tests'
 * view of the slots; the name is interned and held while it is the slot's). */
static DcSlot dc_slot_probe;
static PyObject *dc_probe_name = NULL;

static PyObject *
module_attr(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "module_attr takes a module and a str");
        return NULL;
    }
    PyObject *name = Py_NewRef(args[1]);
    PyUnicode_InternInPlace(&name);
    if (name == dc_probe_name) {
        Py_DECREF(name);
    }
    else {  /* another name: the slot emptied first, so no freed name's address is compared */
        PyObject *old_dict = dc_slot_probe.dict, *old_value = dc_slot_probe.value;
        dc_slot_probe.dict = dc_slot_probe.value = dc_slot_probe.name = NULL;
        Py_XSETREF(dc_probe_name, name);
        Py_XDECREF(old_dict);
        Py_XDECREF(old_value);
    }
    name = Py_NewRef(dc_probe_name);  /* (held through the read: a finalizer may rebind it) */
    PyObject *value = dc_module_get(args[0], name, &dc_slot_probe);
    Py_DECREF(name);
    return value;
}

/* DC_MODULE_ATTR's slots, one per name (a name read from another module replaces it). */
#if defined(__GNUC__) || defined(__clang__)
#define DC_SLOT(name) static DcSlot dc_slot_##name __attribute__((unused));
#else
#define DC_SLOT(name) static DcSlot dc_slot_##name;
#endif
DC_SLOT(NonRecordingSpan) DC_SLOT(getrandbits) DC_SLOT(INVALID_SPAN_ID)
DC_SLOT(INVALID_TRACE_ID) DC_SLOT(INVALID_SPAN_CONTEXT) DC_SLOT(_current)
DC_SLOT(_TRACER_PROVIDER) DC_SLOT(dropped_child) DC_SLOT(_names) DC_SLOT(_METER_PROVIDER)
DC_SLOT(off_provider) DC_SLOT(_dropped_child) DC_SLOT(_propagate_now)
DC_SLOT(_HTTP_TEXT_FORMAT) DC_SLOT(_w3c_now) DC_SLOT(_write_common)
DC_SLOT(dropped_child_of) DC_SLOT(start_lazy_of) DC_SLOT(__init__) DC_SLOT(random)

#define DC_MODULE_ATTR(module, name) \
    dc_module_attr((module), #name, &dc_name_##name, &dc_slot_##name)

#define DC_CALL0(obj, name) dc_call0((obj), #name, &dc_name_##name)

static PyObject *
dc_call0(PyObject *obj, const char *text, PyObject **cache)
{
    PyObject *name = dc_intern(text, cache);
    return name == NULL ? NULL : PyObject_CallMethodNoArgs(obj, name);
}

#define DC_ATTR(obj, name) dc_attr((obj), #name, &dc_name_##name)

/* starter._state, checked (new reference). */
static PyObject *
dc_state(PyObject *starter)
{
    PyObject *state = DC_ATTR(starter, _state);
    if (state != NULL && (!PyTuple_CheckExact(state) || PyTuple_GET_SIZE(state) != ST_SIZE)) {
        Py_DECREF(state);
        PyErr_SetString(PyExc_TypeError, "Starter._state is not the 10-tuple it should be");
        return NULL;
    }
    return state;
}

#define ST(state, index) PyTuple_GET_ITEM((state), (index))

/* trace_api.NonRecordingSpan(context=span_context), as _non_recording makes it. */
static PyObject *
dc_non_recording(PyObject *span_context, int plain_allowed)
{
    PyObject *nrs = DC_MODULE_ATTR(dc_trace_api, NonRecordingSpan);
    if (nrs == NULL) {
        return NULL;
    }
    if (plain_allowed && nrs == dc_nrs && dc_nrs_init != Py_None) {
        /* nrs.__init__: the class's own, when its dict has one (its metaclass's is no data
         * descriptor), without the lookups through the metaclass and the MRO */
        PyObject *dict = ((PyTypeObject *)nrs)->tp_dict;
        PyObject *name = dc_intern("__init__", &dc_name___init__);
        PyObject *init = dict == NULL || name == NULL || !PyDict_CheckExact(dict) ? NULL
            : dc_dict_get(dict, name, &dc_slot___init__);
        if (init == NULL && !PyErr_Occurred()) {
            init = DC_ATTR(nrs, __init__);
        }
        if (init == NULL) {
            Py_DECREF(nrs);
            return NULL;
        }
        Py_DECREF(init);  /* (compared by identity only) */
        if (init == dc_nrs_init) {
            PyObject *empty = PyTuple_New(0);
            PyObject *span = empty == NULL ? NULL
                : PyBaseObject_Type.tp_new((PyTypeObject *)nrs, empty, NULL);
            Py_XDECREF(empty);
            Py_DECREF(nrs);
            if (span == NULL) {
                return NULL;
            }
            PyObject *name = dc_intern("_context", &dc_name__context);
            if (name == NULL || PyObject_SetAttr(span, name, span_context) < 0) {
                Py_DECREF(span);
                return NULL;
            }
            return span;
        }
    }
    PyObject *name = dc_intern("context", &dc_name_context);
    PyObject *kwnames = name == NULL ? NULL : PyTuple_Pack(1, name);
    if (kwnames == NULL) {
        Py_DECREF(nrs);
        return NULL;
    }
    PyObject *call_args[1] = {span_context};
    PyObject *span = PyObject_Vectorcall(nrs, call_args, 0, kwnames);
    Py_DECREF(kwnames);
    Py_DECREF(nrs);
    return span;
}

/* n when most is 2**n - 1 (an exact int), else 0. */
static size_t
dc_ones(PyObject *most)
{
    if (most == NULL || !PyLong_CheckExact(most) || _PyLong_Sign(most) <= 0) {
        return 0;
    }
    PyObject *one = PyLong_FromLong(1);
    PyObject *next = one == NULL ? NULL : PyNumber_Add(most, one);
    PyObject *both = next == NULL ? NULL : PyNumber_And(next, most);
    int zero = both == NULL ? -1 : PyObject_Not(both);
    Py_XDECREF(one);
    Py_XDECREF(next);
    Py_XDECREF(both);
    size_t bits = zero > 0 ? _PyLong_NumBits(most) : 0;
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return bits == (size_t)-1 ? 0 : bits;
}

/* Python's ``0 < value <= most`` (new reference): the first false comparison, else the last.
 * For an exact int and most == 2**bits - 1 (bits > 0), the same bool from the int's sign and
 * bit length, without the two comparisons. */
static PyObject *
dc_between(PyObject *value, PyObject *most, size_t bits)
{
    if (bits > 0 && PyLong_CheckExact(value)) {
        if (_PyLong_Sign(value) <= 0) {
            return Py_NewRef(Py_False);
        }
        size_t used = _PyLong_NumBits(value);
        if (used != (size_t)-1) {
            return PyBool_FromLong(used <= bits);
        }
        PyErr_Clear();  /* (too large to count: the comparisons below decide) */
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_RichCompare(zero, value, Py_LT);
    Py_DECREF(zero);
    if (result == NULL) {
        return NULL;
    }
    int first = PyObject_IsTrue(result);
    if (first < 0) {
        Py_DECREF(result);
        return NULL;
    }
    if (first) {
        Py_SETREF(result, PyObject_RichCompare(value, most, Py_LE));
    }
    return result;
}

/* tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, valid)). */
static PyObject *
dc_context_of(PyObject *trace_id, PyObject *span_id, PyObject *flags, PyObject *state,
              PyObject *valid)
{
    /* (what tuple.__new__ does for a subclass: the subclass's tp_alloc, the items copied) */
    PyTypeObject *type = (PyTypeObject *)dc_span_context;
    PyObject *made = type->tp_alloc(type, 6);
    if (made == NULL) {
        return NULL;
    }
    PyObject *items[6] = {trace_id, span_id, Py_False, flags, state, valid};
    for (Py_ssize_t i = 0; i < 6; i++) {
        PyTuple_SET_ITEM(made, i, Py_NewRef(items[i]));
    }
    return made;
}

/* The child's span context (new reference), from the parent's fields. */
static PyObject *
dc_build(PyObject *trace_id, PyObject *span_id, PyObject *flags, PyObject *state)
{
    PyObject *valid = dc_between(span_id, dc_span_id_max, dc_span_bits);  /* 0 < id <= MAX */
    if (valid == NULL) {
        return NULL;
    }
    PyObject *made = dc_context_of(trace_id, span_id, flags,
                                   state == Py_None ? dc_default_state : state, valid);
    Py_DECREF(valid);
    return made;
}

/* bool(flags & _RANDOM_FLAG) if random_flag == 2
 * else random_flag == 1 and id_generator.is_trace_id_random(); -1 on error. */
static int
dc_random(PyObject *state, PyObject *flags, PyObject *id_generator)
{
    long random_flag = PyLong_AsLong(ST(state, ST_RANDOM_FLAG));
    if (random_flag == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (random_flag == 2) {
        PyObject *bit = PyNumber_And(flags, dc_random_flag);
        if (bit == NULL) {
            return -1;
        }
        int truth = PyObject_IsTrue(bit);
        Py_DECREF(bit);
        return truth;
    }
    if (random_flag != 1) {
        return 0;
    }
    PyObject *answer = ri_call(id_generator, 2);
    if (answer == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(answer);
    Py_DECREF(answer);
    return truth;
}

/* Whether the tracer is enabled (1), not (0), or an error (-1). */
static int
dc_enabled(PyObject *state, PyObject *tracer)
{
    int inline_gate = PyObject_IsTrue(ST(state, ST_GATE_INLINE));
    if (inline_gate < 0) {
        return -1;
    }
    PyObject *answer;
    if (inline_gate) {
        PyObject *config = DC_ATTR(tracer, _tracer_config);
        if (config == NULL) {
            return -1;
        }
        answer = DC_ATTR(config, is_enabled);
        Py_DECREF(config);
    }
    else {
        answer = DC_CALL0(tracer, _is_enabled);
    }
    if (answer == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(answer);
    Py_DECREF(answer);
    return truth;
}

/* tracer._tracer_metrics.start_span(parent, Decision.DROP) unless it is the no-op counter. */
static int
dc_count(PyObject *state, PyObject *tracer, PyObject *parent)
{
    PyObject *metrics = DC_ATTR(tracer, _tracer_metrics);
    if (metrics == NULL) {
        return -1;
    }
    if (metrics == ST(state, ST_NOOP_METRICS)) {
        Py_DECREF(metrics);
        return 0;
    }
    Py_DECREF(metrics);
    metrics = DC_ATTR(tracer, _tracer_metrics);  /* (read again, as the Python method does) */
    if (metrics == NULL) {
        return -1;
    }
    PyObject *name = dc_intern("start_span", &dc_name_start_span);
    PyObject *call_args[3] = {metrics, parent, dc_drop};
    PyObject *result = name == NULL ? NULL
        : PyObject_VectorcallMethod(name, call_args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(metrics);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* tracer.id_generator, past a PendingIds wrapper (new reference). */
static PyObject *
dc_generator(PyObject *tracer)
{
    PyObject *id_generator = DC_ATTR(tracer, id_generator);
    if (id_generator != NULL && (PyObject *)Py_TYPE(id_generator) == dc_pending_ids) {
        Py_SETREF(id_generator, DC_ATTR(id_generator, inner));
    }
    return id_generator;
}

/* ---- the SDK's RandomIdGenerator and the API's NonRecordingSpan.get_span_context, inline --
 *
 * Set by configure_ids() (from _sdk_spans, once it has checked each function's code): where
 * a generator is the SDK's RandomIdGenerator or a subclass of it, and the method about to be
 * called is still that class's own (not replaced on the class, overridden by the subclass
 * nor set on the instance), its body runs
 * here: random.getrandbits(bits), drawn again while it gives the invalid ID (0), from the
 * ``random`` its module reads at that moment: the same draws, in the same order. Likewise a
 * span that is exactly the API's NonRecordingSpan, whose get_span_context is the API's own,
 * gives its _context without the call.
 */
static PyObject *ri_type = NULL;       /* RandomIdGenerator (NULL: never inline) */
static PyObject *ri_span = NULL;       /* RandomIdGenerator.generate_span_id */
static PyObject *ri_trace = NULL;      /* RandomIdGenerator.generate_trace_id */
static PyObject *ri_is_random = NULL;  /* RandomIdGenerator.is_trace_id_random (returns True) */
static PyObject *ri_globals = NULL;    /* the functions' module dict (their __globals__) */
static PyObject *ri_bits[2] = {NULL, NULL};  /* 64, 128 */
static PyObject *ri_nrs = NULL;        /* the API's NonRecordingSpan (NULL: always call) */
static PyObject *ri_get_context = NULL; /* its get_span_context (returns self._context) */
DC_NAME(random) DC_NAME(getrandbits) DC_NAME(trace) DC_NAME(INVALID_SPAN_ID)
DC_NAME(INVALID_TRACE_ID)

/* configure_ids(RandomIdGenerator or None, generate_span_id, generate_trace_id,
 * is_trace_id_random or None, their globals, NonRecordingSpan or None, its
 * get_span_context): the functions whose bodies the fast paths below stand for. */
static PyObject *
configure_ids(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || (args[0] != Py_None && !PyType_Check(args[0]))
            || !PyDict_Check(args[4]) || (args[5] != Py_None && !PyType_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError, "configure_ids() takes the generator class or None, "
                        "its 3 methods, their globals, the span class or None and its method");
        return NULL;
    }
    if (ri_bits[0] == NULL && (ri_bits[0] = PyLong_FromLong(64)) == NULL) {
        return NULL;
    }
    if (ri_bits[1] == NULL && (ri_bits[1] = PyLong_FromLong(128)) == NULL) {
        return NULL;
    }
    PyObject **slots[7] = {&ri_type, &ri_span, &ri_trace, &ri_is_random, &ri_globals, &ri_nrs,
                           &ri_get_context};
    for (int i = 0; i < 7; i++) {
        PyObject *value = args[i] == Py_None ? NULL : args[i];
        Py_XINCREF(value);
        Py_XSETREF(*slots[i], value);
    }
    Py_RETURN_NONE;
}

/* What obj.name would call: 1 with *method the type's own function (unbound, the instance
 * not overriding it), 0 with *method the attribute itself (bound); -1 on an error. */
static int
ri_method(PyObject *obj, PyObject *name, PyObject **method)
{
#if PY_VERSION_HEX < 0x030D0000
    *method = NULL;
    int unbound = _PyObject_GetMethod(obj, name, method);
    return *method == NULL ? -1 : unbound;
#else
    *method = PyObject_GetAttr(obj, name);
    if (*method == NULL) {
        return -1;
    }
    if (PyMethod_Check(*method) && PyMethod_GET_SELF(*method) == obj) {
        PyObject *function = Py_NewRef(PyMethod_GET_FUNCTION(*method));
        Py_SETREF(*method, function);
        return 1;
    }
    return 0;
#endif
}

/* The body of RandomIdGenerator.generate_span_id (which 0) or generate_trace_id (1) for
 * ``generator``: random.getrandbits(bits) until it is not trace.INVALID_*_ID. */
static PyObject *
ri_draw(PyObject *generator, PyObject *function, int which)
{
    PyObject *name = dc_intern("random", &dc_name_random);
    PyObject *random = name == NULL ? NULL : dc_dict_get(ri_globals, name, &dc_slot_random);
    if (random == NULL || !PyModule_CheckExact(random)) {  /* (the function decides) */
        Py_XDECREF(random);
        return PyErr_Occurred() ? NULL : PyObject_CallOneArg(function, generator);
    }
    PyObject *draw = DC_MODULE_ATTR(random, getrandbits);
    Py_DECREF(random);
    if (draw == NULL) {
        return NULL;
    }
    PyObject *id = NULL;
    for (;;) {
        id = PyObject_CallOneArg(draw, ri_bits[which]);
        if (id == NULL) {
            break;
        }
        int invalid;
        if (PyLong_CheckExact(id)) {  /* == trace.INVALID_*_ID, which is 0 (checked) */
            invalid = _PyLong_Sign(id) == 0;
        }
        else {  /* an int subclass or another type: its own == decides */
            name = dc_intern("trace", &dc_name_trace);
            PyObject *trace = name == NULL ? NULL : PyDict_GetItemWithError(ri_globals, name);
            PyObject *zero = trace == NULL ? NULL : which == 0
                ? DC_MODULE_ATTR(trace, INVALID_SPAN_ID) : DC_MODULE_ATTR(trace, INVALID_TRACE_ID);
            PyObject *same = zero == NULL ? NULL : PyObject_RichCompare(id, zero, Py_EQ);
            invalid = same == NULL ? -1 : PyObject_IsTrue(same);
            Py_XDECREF(zero);
            Py_XDECREF(same);
            if (trace == NULL && !PyErr_Occurred()) {
                PyErr_SetString(PyExc_NameError, "name 'trace' is not defined");
            }
        }
        if (invalid == 0) {
            break;
        }
        Py_CLEAR(id);
        if (invalid < 0) {
            break;
        }
    }
    Py_DECREF(draw);
    return id;
}

/* generator.generate_span_id() (which 0), generator.generate_trace_id() (1), or
 * generator.is_trace_id_random() (2) (new reference), the RandomIdGenerator's own inline. */
static PyObject *
ri_call(PyObject *generator, int which)
{
    static PyObject **names[3] = {&dc_name_generate_span_id, &dc_name_generate_trace_id,
                                  &dc_name_is_trace_id_random};
    static const char *texts[3] = {"generate_span_id", "generate_trace_id",
                                   "is_trace_id_random"};
    PyObject *name = dc_intern(texts[which], names[which]);
    if (name == NULL) {
        return NULL;
    }
    PyObject *own = which == 0 ? ri_span : which == 1 ? ri_trace : ri_is_random;
    /* (A subclass too: the method found below must still be the class's own function,
     * inherited, neither overridden on the subclass nor set on the instance.) */
    if (ri_type == NULL || own == NULL || ((PyObject *)Py_TYPE(generator) != ri_type
            && !PyType_IsSubtype(Py_TYPE(generator), (PyTypeObject *)ri_type))) {
        return PyObject_CallMethodNoArgs(generator, name);
    }
    PyObject *method;
    int unbound = ri_method(generator, name, &method);
    if (unbound < 0) {
        return NULL;
    }
    PyObject *result;
    if (unbound && method == own) {
        result = which == 2 ? Py_NewRef(Py_True) : ri_draw(generator, own, which);
    }
    else {
        result = unbound ? PyObject_CallOneArg(method, generator) : PyObject_CallNoArgs(method);
    }
    Py_DECREF(method);
    return result;
}

/* span.get_span_context() (new reference); span._context itself when the span is exactly
 * the API's NonRecordingSpan and the method the API's own. */
static PyObject *
ri_span_context(PyObject *span)
{
    PyObject *name = dc_intern("get_span_context", &dc_name_get_span_context);
    if (name == NULL) {
        return NULL;
    }
    if (ri_nrs == NULL || (PyObject *)Py_TYPE(span) != ri_nrs) {
        return PyObject_CallMethodNoArgs(span, name);
    }
    PyObject *method;
    int unbound = ri_method(span, name, &method);
    if (unbound < 0) {
        return NULL;
    }
    PyObject *result;
    if (unbound && method == ri_get_context) {
        result = DC_ATTR(span, _context);
    }
    else {
        result = unbound ? PyObject_CallOneArg(method, span) : PyObject_CallNoArgs(method);
    }
    Py_DECREF(method);
    return result;
}

/* The span from the tracer's ID generator onward (the drop is decided). */
static PyObject *
dc_made(PyObject *state, PyObject *tracer, PyObject *parent, PyObject *span_id, int gated)
{
    PyObject *trace_id = PyTuple_GET_ITEM(parent, 0);
    PyObject *flags = PyTuple_GET_ITEM(parent, 3);
    PyObject *trace_state = PyTuple_GET_ITEM(parent, 4);
    PyObject *id_generator = dc_generator(tracer);
    if (id_generator == NULL) {
        return NULL;
    }
    int random = dc_random(state, flags, id_generator);
    if (random < 0) {
        Py_DECREF(id_generator);
        return NULL;
    }
    int given = PyObject_IsTrue(span_id);
    if (given < 0) {
        Py_DECREF(id_generator);
        return NULL;
    }
    if (given) {
        Py_INCREF(span_id);
    }
    else {
        span_id = ri_call(id_generator, 0);
    }
    Py_DECREF(id_generator);
    if (span_id == NULL) {
        return NULL;
    }
    PyObject *span_context = dc_build(trace_id, span_id,
                                      PyTuple_GET_ITEM(dc_flags, random ? 2 : 0), trace_state);
    Py_DECREF(span_id);
    if (span_context == NULL) {
        return NULL;
    }
    if (gated && dc_count(state, tracer, parent) < 0) {
        Py_DECREF(span_context);
        return NULL;
    }
    PyObject *span = dc_non_recording(span_context, 1);
    Py_DECREF(span_context);
    return span;
}

/* 1: the sampler drops a child of parent; 0: not known (None); -1: error. */
static int
dc_drops(PyObject *drops, PyObject *parent)
{
    if (PyObject_IsTrue(PyTuple_GET_ITEM(parent, 5)) == 0) {  /* valid (errors below) */
        return 0;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    int remote = PyObject_IsTrue(PyTuple_GET_ITEM(parent, 2));
    if (remote < 0) {
        return -1;
    }
    PyObject *one = PyLong_FromLong(1);
    PyObject *bit = one == NULL ? NULL : PyNumber_And(PyTuple_GET_ITEM(parent, 3), one);
    Py_XDECREF(one);
    if (bit == NULL) {
        return -1;
    }
    int sampled = PyObject_IsTrue(bit);
    Py_DECREF(bit);
    if (sampled < 0) {
        return -1;
    }
    PyObject *drop = PySequence_GetItem(drops, (remote ? 2 : 0) + (sampled ? 0 : 1));
    if (drop == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(drop);
    Py_DECREF(drop);
    return truth;
}

/* 1 when tracer.sampler is still the one the starter read (0: another one; -1: error). */
static int
dc_same_sampler(PyObject *state)
{
    PyObject *sampler = DC_ATTR(ST(state, ST_TRACER), sampler);
    if (sampler == NULL) {
        return -1;
    }
    Py_DECREF(sampler);  /* (compared by identity only) */
    return sampler == ST(state, ST_SAMPLER);
}

static PyObject *
dc_dropped(PyObject *starter, PyObject *parent, PyObject *span_id, Py_ssize_t nargs)
{
    PyObject *state = dc_state(starter);
    if (state == NULL) {
        return NULL;
    }
    int shortcuts = PyObject_IsTrue(ST(state, ST_SHORTCUTS));
    int same = shortcuts <= 0 ? shortcuts : dc_same_sampler(state);
    if (same <= 0) {
        Py_DECREF(state);
        if (same < 0) {
            return NULL;
        }
        if (shortcuts) {  /* another sampler: the Python method reads it */
            PyObject *call_args[3] = {starter, parent, span_id};
            return PyObject_Vectorcall(dc_python, call_args, nargs, NULL);
        }
        Py_RETURN_NONE;
    }
    PyObject *drops = ST(state, ST_DROPS);
    if (drops == Py_None || (PyObject *)Py_TYPE(parent) != dc_span_context) {
        Py_DECREF(state);
        Py_RETURN_NONE;
    }
    if (PyTuple_GET_SIZE(parent) != 6) {  /* (the Python method's unpack decides) */
        Py_DECREF(state);
        PyObject *call_args[3] = {starter, parent, span_id};
        return PyObject_Vectorcall(dc_python, call_args, nargs, NULL);
    }
    PyObject *span = NULL;
    PyObject *tracer = ST(state, ST_TRACER);
    int drop = dc_drops(drops, parent);
    int gated = drop <= 0 ? 0 : PyObject_IsTrue(ST(state, ST_GATED));
    int enabled = gated <= 0 ? gated : dc_enabled(state, tracer);
    if (drop < 0 || gated < 0 || enabled < 0) {
        span = NULL;
    }
    else if (drop == 0) {
        span = Py_NewRef(Py_None);
    }
    else if (gated && !enabled) {
        span = dc_non_recording(parent, 0);
    }
    else {
        span = dc_made(state, tracer, parent, span_id, gated);
    }
    Py_DECREF(state);
    return span;
}

/* dropped_child(starter, parent, span_id): Starter.dropped_child(starter, parent, span_id). */
static PyObject *
dropped_child(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "dropped_child takes 2 or 3 arguments");
        return NULL;
    }
    if (dc_python == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dropped_child: configure_dropped was not called");
        return NULL;
    }
    return dc_dropped(args[0], args[1], nargs == 3 ? args[2] : Py_None, nargs);
}

/* Python's ``0 < trace_id <= TRACE_MAX and 0 < span_id <= SPAN_MAX`` (new reference). */
static PyObject *
dc_both_valid(PyObject *trace_id, PyObject *span_id)
{
    PyObject *valid = dc_between(trace_id, dc_trace_id_max, dc_trace_bits);
    if (valid == NULL) {
        return NULL;
    }
    int truth = PyObject_IsTrue(valid);
    if (truth <= 0) {
        if (truth < 0) {
            Py_CLEAR(valid);
        }
        return valid;
    }
    Py_DECREF(valid);
    return dc_between(span_id, dc_span_id_max, dc_span_bits);
}

/* 1 when (trace_id & ratio.TRACE_ID_LIMIT) < ratio._bound (the root is sampled); -1: error. */
static int
dc_ratio_keeps(PyObject *ratio, PyObject *trace_id)
{
    PyObject *limit = DC_ATTR(ratio, TRACE_ID_LIMIT);
    if (limit == NULL) {
        return -1;
    }
    PyObject *masked = PyNumber_And(trace_id, limit);
    Py_DECREF(limit);
    if (masked == NULL) {
        return -1;
    }
    PyObject *bound = DC_ATTR(ratio, _bound);
    if (bound == NULL) {
        Py_DECREF(masked);
        return -1;
    }
    PyObject *below = PyObject_RichCompare(masked, bound, Py_LT);
    Py_DECREF(masked);
    Py_DECREF(bound);
    if (below == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(below);
    Py_DECREF(below);
    return truth;
}

/* The unsampled root's span, from its trace ID on (the drop is decided): Starter._root. */
static PyObject *
dc_root_dropped(PyObject *state, PyObject *tracer, PyObject *id_generator, PyObject *trace_id)
{
    long random_flag = PyLong_AsLong(ST(state, ST_RANDOM_FLAG));
    if (random_flag == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *random;  /* random_flag != 0 and id_generator.is_trace_id_random() */
    if (random_flag != 0) {
        random = ri_call(id_generator, 2);
        if (random == NULL) {
            return NULL;
        }
    }
    else {
        random = Py_NewRef(Py_False);
    }
    PyObject *span_id = ri_call(id_generator, 0);
    int truth = span_id == NULL ? -1 : PyObject_IsTrue(random);
    Py_DECREF(random);
    PyObject *valid = truth < 0 ? NULL : dc_both_valid(trace_id, span_id);
    PyObject *span_context = valid == NULL ? NULL
        : dc_context_of(trace_id, span_id, PyTuple_GET_ITEM(dc_flags, truth ? 2 : 0),
                        dc_default_state, valid);
    Py_XDECREF(valid);
    Py_XDECREF(span_id);
    if (span_context == NULL) {
        return NULL;
    }
    int gated = PyObject_IsTrue(ST(state, ST_GATED));
    if (gated < 0 || (gated && dc_count(state, tracer, Py_None) < 0)) {
        Py_DECREF(span_context);
        return NULL;
    }
    PyObject *span = dc_non_recording(span_context, 1);
    Py_DECREF(span_context);
    return span;
}

/* Starter._root(name, context, kind, attributes, parent) under the starter's _state. */
static PyObject *
dc_root(PyObject *state, PyObject *starter, PyObject *const *args, PyObject *parent)
{
    PyObject *tracer = ST(state, ST_TRACER);
    int gated = PyObject_IsTrue(ST(state, ST_GATED));
    int enabled = gated <= 0 ? gated : dc_enabled(state, tracer);
    if (enabled < 0 || gated < 0) {
        return NULL;
    }
    if (gated && !enabled) {
        return dc_non_recording(parent, 0);
    }
    PyObject *id_generator = dc_generator(tracer);
    if (id_generator == NULL) {
        return NULL;
    }
    PyObject *trace_id = ri_call(id_generator, 1);
    int keeps = trace_id == NULL ? -1 : dc_ratio_keeps(ST(state, ST_RATIO), trace_id);
    PyObject *span = NULL;
    if (keeps == 0) {
        span = dc_root_dropped(state, tracer, id_generator, trace_id);
    }
    else if (keeps > 0) {  /* sampled: self.start(name, context, kind, attributes(), ..., trace_id) */
        PyObject *attributes = PyObject_CallNoArgs(args[3]);
        PyObject *name = dc_intern("start", &dc_name_start);
        if (attributes != NULL && name != NULL) {
            PyObject *call_args[9] = {starter, args[0], args[1], args[2], attributes, Py_None,
                                      Py_None, Py_None, trace_id};
            span = PyObject_VectorcallMethod(name, call_args, 9 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                             NULL);
        }
        Py_XDECREF(attributes);
    }
    Py_DECREF(id_generator);
    Py_XDECREF(trace_id);
    return span;
}

/* start_lazy(starter, name, context, kind, attributes): Starter.start_lazy. A root under a
 * known ratio is decided here; everything else goes to the Python method. */
static PyObject *
start_lazy(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "start_lazy takes 5 arguments");
        return NULL;
    }
    if (dc_python == NULL || dc_lazy_python == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "start_lazy: configure_lazy was not called");
        return NULL;
    }
    PyObject *starter = args[0], *context = args[2];
    PyObject *state = dc_state(starter);
    if (state == NULL) {
        return NULL;
    }
    int fast = PyObject_IsTrue(ST(state, ST_SHORTCUTS));
    if (fast > 0) {  /* a root under a known ratio, in a Context: ratio is not None and fixed_ids */
        fast = (ST(state, ST_RATIO) != Py_None && (PyObject *)Py_TYPE(context) == dc_context_type)
            ? PyObject_IsTrue(ST(state, ST_FIXED_IDS)) : 0;
    }
    if (fast > 0) {
        fast = dc_same_sampler(state);
    }
    if (fast > 0) {
        PyObject *current = PyDict_GetItemWithError(context, dc_span_key);  /* context.get() */
        fast = current == NULL ? (PyErr_Occurred() ? -1 : 1) : current == Py_None;
    }
    PyObject *span = NULL;
    if (fast > 0) {
        PyObject *parent = DC_MODULE_ATTR(dc_trace_api, INVALID_SPAN_CONTEXT);
        if (parent != NULL) {
            span = dc_root(state, starter, args + 1, parent);
            Py_DECREF(parent);
        }
    }
    else if (fast == 0) {
        span = PyObject_Vectorcall(dc_lazy_python, args, 5, NULL);
    }
    Py_DECREF(state);
    return span;
}

/* ---- the starter in force, and the two entries hop.py and transaction.py call ----------- */

/* spans.fast_starter()'s answer (new reference; None for none): its cache while the settings
 * and the global provider it was kept for are the ones in force, as spans.dropped_child
 * reads it, else the call. */
static PyObject *
dc_starter_now(void)
{
    PyObject *cache = dc_fast_cache;  /* (the list object itself is never rebound) */
    PyObject *settings = DC_MODULE_ATTR(dc_settings_module, _current);
    PyObject *provider = settings == NULL ? NULL : DC_MODULE_ATTR(dc_sp_trace_api, _TRACER_PROVIDER);
    if (provider == NULL && settings != NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();  /* no such global: fast_starter() asks the public API */
        provider = Py_NewRef(Py_None);
    }
    PyObject *starter = NULL;
    if (provider != NULL) {
        if (PyList_CheckExact(cache) && PyList_GET_SIZE(cache) == 3
                && PyList_GET_ITEM(cache, 0) == settings && PyList_GET_ITEM(cache, 1) == provider
                && provider != Py_None) {
            starter = Py_NewRef(PyList_GET_ITEM(cache, 2));
        }
        else {
            starter = DC_CALL0(dc_spans_module, fast_starter);
        }
    }
    Py_XDECREF(settings);
    Py_XDECREF(provider);
    return starter;
}

/* _sdk_spans.<name> (new reference), the module spans.py keeps once imported; NULL with no
 * error set when it is not (then the caller uses the starter's own method). */
static PyObject *
dc_sdk_entry(const char *text, PyObject **cache, DcSlot *slot)
{
    PyObject *holder = dc_sdk_holder;  /* (the list object itself is never rebound) */
    PyObject *sdk = PyList_GET_SIZE(holder) == 1 ? PyList_GET_ITEM(holder, 0) : Py_None;
    if (sdk == Py_None) {
        return NULL;
    }
    Py_INCREF(sdk);  /* (the list may change during the lookup) */
    PyObject *entry = dc_module_attr(sdk, text, cache, slot);
    Py_DECREF(sdk);
    return entry;
}

/* parent if it is a SpanContext, else parent.get_span_context() (new reference). */
static PyObject *
dc_span_context_of(PyObject *parent)
{
    if ((PyObject *)Py_TYPE(parent) == dc_sp_span_context) {
        return Py_NewRef(parent);
    }
    return ri_span_context(parent);
}

/* dropped_span(parent, span_id): spans.dropped_child(parent, span_id), where parent is a span
 * or its span context: the starter in force, then _sdk_spans.dropped_child_of. */
static PyObject *
dropped_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "dropped_span takes 1 or 2 arguments");
        return NULL;
    }
    if (dc_spans_module == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dropped_span: configure_spans was not called");
        return NULL;
    }
    PyObject *parent = args[0], *span_id = nargs == 2 ? args[1] : Py_None;
    parent = dc_span_context_of(parent);
    if (parent == NULL) {
        return NULL;
    }
    PyObject *starter = dc_starter_now();
    PyObject *span = NULL;
    if (starter == Py_None) {
        span = Py_NewRef(Py_None);
    }
    else if (starter != NULL) {
        PyObject *entry = dc_sdk_entry("dropped_child_of", &dc_name_dropped_child_of,
                                       &dc_slot_dropped_child_of);
        if (entry != NULL && PyCFunction_Check(entry)
                && PyCFunction_GET_FUNCTION(entry) == (PyCFunction)(void (*)(void))dropped_child) {
            span = dc_dropped(starter, parent, span_id, 3);  /* ours: without the call */
        }
        else if (entry != NULL) {
            PyObject *call_args[3] = {starter, parent, span_id};
            span = PyObject_Vectorcall(entry, call_args, 3, NULL);
        }
        else if (!PyErr_Occurred()) {
            PyObject *call_args[3] = {starter, parent, span_id};
            PyObject *name = dc_intern("dropped_child", &dc_name_dropped_child);
            span = name == NULL ? NULL : PyObject_VectorcallMethod(
                name, call_args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
        Py_XDECREF(entry);
        Py_DECREF(starter);
    }
    Py_DECREF(parent);
    return span;
}

/* dropped_hop(parent, span_id, where): hop._dropped_child. spans.dropped_child(parent,
 * span_id) (this module's dropped_span unless replaced); an Exception it raises is counted
 * by diagnostics.internal_error(where, exc) and gives hop._FAILED. */
static PyObject *
dropped_hop(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "dropped_hop takes 3 arguments");
        return NULL;
    }
    if (dc_spans_module == NULL || dc_failed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dropped_hop: configure_spans was not called");
        return NULL;
    }
    PyObject *entry = DC_MODULE_ATTR(dc_spans_module, dropped_child);
    PyObject *span = NULL;
    if (entry != NULL && PyCFunction_Check(entry)
            && PyCFunction_GET_FUNCTION(entry) == (PyCFunction)(void (*)(void))dropped_span) {
        span = dropped_span(NULL, args, 2);  /* ours: without the call */
    }
    else if (entry != NULL) {
        span = PyObject_Vectorcall(entry, args, 2, NULL);
    }
    Py_XDECREF(entry);
    if (span != NULL || !PyErr_ExceptionMatches(PyExc_Exception)) {
        return span;
    }
    /* except Exception as exc: diagnostics.internal_error(where, exc); return _FAILED */
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *traceback;
    PyErr_Fetch(&type, &exc, &traceback);
    PyErr_NormalizeException(&type, &exc, &traceback);
    if (traceback != NULL && exc != NULL) {
        PyException_SetTraceback(exc, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    if (exc == NULL) {
        return NULL;
    }
#endif
    PyObject *call_args[2] = {args[2], exc};
    PyObject *result = PyObject_Vectorcall(dc_internal_error, call_args, 2, NULL);
    Py_DECREF(exc);
    if (result == NULL) {
        return NULL;
    }
    Py_DECREF(result);
    return Py_NewRef(dc_failed);
}

/* lazy_span(name, context, kind, attributes): spans.lazy_span, the starter in force's
 * _sdk_spans.start_lazy_of; None when no starter's shortcuts apply. */
static PyObject *
lazy_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "lazy_span takes 4 arguments");
        return NULL;
    }
    if (dc_spans_module == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "lazy_span: configure_spans was not called");
        return NULL;
    }
    PyObject *starter = dc_starter_now();
    if (starter == NULL || starter == Py_None) {
        return starter;
    }
    PyObject *span = NULL;
    PyObject *call_args[5] = {starter, args[0], args[1], args[2], args[3]};
    PyObject *entry = dc_sdk_entry("start_lazy_of", &dc_name_start_lazy_of, &dc_slot_start_lazy_of);
    if (entry != NULL && PyCFunction_Check(entry)
            && PyCFunction_GET_FUNCTION(entry) == (PyCFunction)(void (*)(void))start_lazy) {
        span = start_lazy(NULL, call_args, 5);  /* ours: without the call */
    }
    else if (entry != NULL) {
        span = PyObject_Vectorcall(entry, call_args, 5, NULL);
    }
    else if (!PyErr_Occurred()) {
        PyObject *name = dc_intern("start_lazy", &dc_name_start_lazy);
        span = name == NULL ? NULL : PyObject_VectorcallMethod(
            name, call_args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_XDECREF(entry);
    Py_DECREF(starter);
    return span;
}

/*
 * consume_scope._open_unrecorded's common case in one call (core/hop.py): read_incoming on
 * the carrier, then, when the message carries all of its context (a span context, a
 * transaction ID and the sender's baggage mirroring it), no span is current, and its queue
 * wait is no clock skew: the handler's NonRecordingSpan, HopInfo and Context, attached to the
 * runtime context's ContextVar; hop.py stores on the scope the fields it gives back.
 * What it does not cover goes back to Python with what was read.
 */
static PyObject *ou_context_name = NULL;  /* "_context", interned */
static PyObject *ou_var = NULL;     /* the runtime context's ContextVar */
static PyObject *ou_nrs = NULL;     /* opentelemetry.trace.NonRecordingSpan */
static PyObject *ou_context = NULL;  /* opentelemetry.context.Context */
static PyObject *ou_hop = NULL;     /* hop.HopInfo */
static PyObject *ou_keys = NULL;    /* (SPAN_KEY, TRANSACTION_KEY, BAGGAGE_KEY, HOP_KEY, HOP_SPAN_KEY) */
static PyObject *ou_empty = NULL;   /* () */

static PyObject *
configure_consume(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyContextVar_CheckExact(args[0]) || !PyType_Check(args[1])
        || !PyType_Check(args[2])
        || !PyType_IsSubtype((PyTypeObject *)args[2], &PyDict_Type)
        || !PyType_Check(args[3])
        || !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type)
        || !PyTuple_CheckExact(args[4]) || PyTuple_GET_SIZE(args[4]) != 5) {
        PyErr_SetString(PyExc_TypeError, "configure_consume() takes a ContextVar, the span, "
                        "Context and HopInfo types, and the 5 context keys");
        return NULL;
    }
    if (ou_context_name == NULL
        && (ou_context_name = PyUnicode_InternFromString("_context")) == NULL) {
        return NULL;
    }
    if (ou_empty == NULL && (ou_empty = PyTuple_New(0)) == NULL) {
        return NULL;
    }
    PyObject **slots[5] = {&ou_var, &ou_nrs, &ou_context, &ou_hop, &ou_keys};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    Py_RETURN_NONE;
}

/* The queue wait (ms) at ``now`` (time.time_ns()'s, as hop.py read it) from the send time
 * ``sent`` (an int, or None: no wait); 1 with *wait set, 0 for none, 2 when Python should
 * work it out (skew, an odd value). */
static int
ou_wait(PyObject *sent, PyObject *now, double *wait)
{
    if (sent == Py_None) {
        return 0;
    }
    if (!PyLong_CheckExact(sent) || !PyLong_CheckExact(now)) {
        return 2;
    }
    int overflow = 0, overflow_now = 0;
    long long sent_ns = PyLong_AsLongLongAndOverflow(sent, &overflow);
    long long now_ns = PyLong_AsLongLongAndOverflow(now, &overflow_now);
    /* (-1 is never an error here: exact ints; it is < 0) */
    if (overflow || overflow_now || sent_ns < 0 || now_ns < 0 || sent_ns > now_ns) {
        return 2;
    }
    *wait = (double)(now_ns - sent_ns) / 1e6;
    return 1;
}

/* The handler's Context: ``ambient``'s values, then the message's span, transaction, baggage
 * and hop, as _handler_values' common case builds them (new reference). */
static PyObject *
ou_handler_context(PyObject *ambient, PyObject *span, PyObject *tx, PyObject *baggage,
                   PyObject *hop)
{
    PyObject *ctx = PyObject_CallNoArgs(ou_context);
    if (ctx == NULL) {
        return NULL;
    }
    if (!PyDict_Check(ctx) || (PyDict_GET_SIZE(ambient) && PyDict_Update(ctx, ambient) < 0)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "Context() is no dict");
        }
        Py_DECREF(ctx);
        return NULL;
    }
    PyObject *values[5] = {span, tx, baggage, hop, span};
    for (int i = 0; i < 5; i++) {
        if (PyDict_SetItem(ctx, PyTuple_GET_ITEM(ou_keys, i), values[i]) < 0) {
            Py_DECREF(ctx);
            return NULL;
        }
    }
    return ctx;
}

/* NonRecordingSpan(remote) made as object.__new__ plus its one store (hop.py checks its
 * __init__ does no more), and HopInfo(system, destination, message_id); 0, or -1 with an
 * error set. */
static int
ou_hop_only(PyObject *const *hop_items, PyObject **hop);

static int
ou_span_and_hop(PyObject *const *hop_items, PyObject *remote, PyObject **span, PyObject **hop)
{
    *span = PyBaseObject_Type.tp_new((PyTypeObject *)ou_nrs, ou_empty, NULL);
    if (*span == NULL || PyObject_SetAttr(*span, ou_context_name, remote) < 0) {
        return -1;
    }
    return ou_hop_only(hop_items, hop);
}

/* HopInfo(system, destination, message_id) in *hop; 0, or -1 with an error set. */
static int
ou_hop_only(PyObject *const *hop_items, PyObject **hop)
{
    /* tuple.__new__(HopInfo, (system, destination, message_id)) (tuple_subtype_new) */
    *hop = ((PyTypeObject *)ou_hop)->tp_alloc((PyTypeObject *)ou_hop, 3);
    if (*hop == NULL) {
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        Py_INCREF(hop_items[i]);
        PyTuple_SET_ITEM(*hop, i, hop_items[i]);
    }
    return 0;
}

/* The current Context when it is one this covers (an exact Context with no current span),
 * as a new reference; NULL with no error set when not. */
static PyObject *
ou_ambient(void)
{
    PyObject *ambient = NULL;
    if (PyContextVar_Get(ou_var, NULL, &ambient) < 0 || ambient == NULL) {
        return NULL;
    }
    if (Py_TYPE(ambient) != (PyTypeObject *)ou_context) {
        Py_DECREF(ambient);
        return NULL;
    }
    if (PyDict_GET_SIZE(ambient)) {
        PyObject *current = PyDict_GetItemWithError(ambient, PyTuple_GET_ITEM(ou_keys, 0));
        if ((current != NULL && current != Py_None) || (current == NULL && PyErr_Occurred())) {
            Py_DECREF(ambient);
            return NULL;
        }
    }
    return ambient;
}

/* The dropped child of ``remote`` (dropped_hop(remote, None, where)) for ou_open: the span
 * the handler's context gets in *span (NonRecordingSpan(remote) when dropped_hop failed,
 * counted), the scope's span in *kept (None then) and the active span context in *active;
 * 1 when the sampler may keep the child (Python goes on), 0, or -1 with an error set. */
static int
ou_dropped(PyObject *remote, PyObject *span_id, PyObject *where, PyObject **span,
           PyObject **kept, PyObject **active)
{
    PyObject *call_args[3] = {remote, span_id, where};
    PyObject *child = dropped_hop(NULL, call_args, 3);
    if (child == NULL) {
        return -1;
    }
    if (child == Py_None) {
        Py_DECREF(child);
        return 1;
    }
    if (child == dc_failed) {  /* counted: no span, the producer's context goes on */
        Py_DECREF(child);
        *kept = Py_NewRef(Py_None);
        *active = Py_NewRef(remote);
        return 0;  /* (*span: ou_span_and_hop's NonRecordingSpan(remote)) */
    }
    *active = ri_span_context(child);
    if (*active == NULL) {
        Py_DECREF(child);
        return -1;
    }
    *kept = child;
    *span = Py_NewRef(child);
    return 0;
}

/* hop.first_attempt_span_id(remote, destination) (new reference), ``function`` being that
 * function: its steps here when ``salts`` (hop._destination_salts) holds the destination's
 * salt as an exact int and the IDs are exact ints (what the function computes then, in
 * 64-bit arithmetic: its ``& _MASK_64`` after each step), else the call. */
static PyObject *
ou_first_attempt(PyObject *function, PyObject *salts, PyObject *remote, PyObject *destination)
{
    if (PyDict_CheckExact(salts) && (PyObject *)Py_TYPE(remote) == dc_sp_span_context
            && PyTuple_GET_SIZE(remote) == 6) {
        PyObject *salt = PyDict_GetItemWithError(salts, destination);  /* salts.get(...) */
        if (salt == NULL && PyErr_Occurred()) {
            return NULL;
        }
        PyObject *trace_id = PyTuple_GET_ITEM(remote, 0), *span_id = PyTuple_GET_ITEM(remote, 1);
        if (salt != NULL && PyLong_CheckExact(salt) && PyLong_CheckExact(trace_id)
                && PyLong_CheckExact(span_id)) {
            /* (the low 64 bits of each: two's complement, as Python's & gives them) */
            unsigned long long mixed = (PyLong_AsUnsignedLongLongMask(span_id)
                                        ^ PyLong_AsUnsignedLongLongMask(salt)
                                        ^ PyLong_AsUnsignedLongLongMask(trace_id))
                * 0x9E3779B97F4A7C15ULL;
            if (PyErr_Occurred()) {
                return NULL;
            }
            mixed ^= mixed >> 31;
            return PyLong_FromUnsignedLongLong(mixed ? mixed : 1);
        }
    }
    PyObject *call_args[2] = {remote, destination};
    return PyObject_Vectorcall(function, call_args, 2, NULL);
}

/* The scope opened (what hop.py stores on it): (incoming, transaction ID, queue wait or None,
 * active span context, token, Context), and the scope's span when ``where`` is given (the
 * dropped child, see ou_dropped); Py_None: Python goes on with ``found``; ``(found,)``: the
 * sampler was asked and may keep the child; NULL: an error. ``rest``: now_ns, the scope's
 * sent_ns, system, destination, message_id. ``where``: NULL for open_unrecorded's
 * NonRecordingSpan(remote). ``fixed``: NULL, or (hop.first_attempt_span_id, its salts) when
 * the dropped child gets the first attempt's span ID (a first delivery's), see
 * ou_first_attempt. */
static PyObject *
ou_open(PyObject *found, PyObject *baggage_key, PyObject *const *rest, PyObject *where,
        PyObject *const *fixed)
{
    PyObject *remote = PyTuple_GET_ITEM(found, 0), *tx = PyTuple_GET_ITEM(found, 1);
    PyObject *baggage = PyTuple_GET_ITEM(found, 2), *sent = PyTuple_GET_ITEM(found, 3);
    if (remote == Py_None || !PyUnicode_CheckExact(tx) || PyUnicode_GET_LENGTH(tx) == 0
        || !PyDict_CheckExact(baggage)) {
        Py_RETURN_NONE;
    }
    PyObject *mirrored = PyDict_GetItemWithError(baggage, baggage_key);
    if (mirrored != tx) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    double wait = 0.0;
    int waited = ou_wait(sent != Py_None ? sent : rest[1], rest[0], &wait);
    if (waited == 2) {
        Py_RETURN_NONE;
    }
    PyObject *ambient = ou_ambient();
    if (ambient == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    PyObject *span = NULL, *hop = NULL, *ctx = NULL, *token = NULL, *result = NULL;
    PyObject *kept = NULL, *active = NULL;
    if (where != NULL) {
        PyObject *span_id = fixed == NULL ? Py_NewRef(Py_None)
            : ou_first_attempt(fixed[0], fixed[1], remote, rest[3]);
        int asked = span_id == NULL ? -1 : ou_dropped(remote, span_id, where, &span, &kept,
                                                       &active);
        Py_XDECREF(span_id);
        if (asked != 0) {
            Py_DECREF(ambient);
            return asked < 0 ? NULL : PyTuple_Pack(1, found);
        }
    }
    PyObject *ms = waited ? PyFloat_FromDouble(wait) : Py_NewRef(Py_None);
    if (ms != NULL && (span != NULL ? ou_hop_only(rest + 2, &hop)
                       : ou_span_and_hop(rest + 2, remote, &span, &hop)) == 0
        && (ctx = ou_handler_context(ambient, span, tx, baggage, hop)) != NULL
        && (token = PyContextVar_Set(ou_var, ctx)) != NULL) {
        result = kept == NULL ? PyTuple_Pack(6, found, tx, ms, remote, token, ctx)
            : PyTuple_Pack(7, found, tx, ms, active, token, ctx, kept);
        if (result == NULL && PyContextVar_Reset(ou_var, token) < 0) {
            PyErr_Clear();  /* (the MemoryError stays the one raised) */
        }
    }
    Py_DECREF(ambient);
    Py_XDECREF(kept);
    Py_XDECREF(active);
    Py_XDECREF(ms);
    Py_XDECREF(span);
    Py_XDECREF(hop);
    Py_XDECREF(ctx);
    Py_XDECREF(token);
    return result;
}

/* open_unrecorded(carrier, spec, baggage_key, now_ns, sent_ns, system, destination,
 * message_id): the 6-tuple of ou_open when the scope opened; else what read_incoming gives
 * (None also when it raised an Exception), for Python to go on with. */
static PyObject *ou_entry(PyObject *module, PyObject *const *args, PyObject *where,
                          PyObject *const *fixed);

static PyObject *
open_unrecorded(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyUnicode_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "open_unrecorded() takes a carrier, a read spec, a "
                        "key, the time in ns, the broker's send time and the hop's 3 fields");
        return NULL;
    }
    if (ou_var == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "open_unrecorded: configure_consume was not called");
        return NULL;
    }
    return ou_entry(module, args, NULL, NULL);
}

/* open_unrecorded's steps; ``where``: open_dropped's (NULL for open_unrecorded). */
static PyObject *
ou_entry(PyObject *module, PyObject *const *args, PyObject *where, PyObject *const *fixed)
{
    PyObject *found = read_incoming(module, args, 2);
    if (found == NULL) {
        if (PyErr_ExceptionMatches(PyExc_Exception)) {  /* read() counts it */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        return NULL;
    }
    if (found == Py_None) {
        return found;
    }
    PyObject *opened = ou_open(found, args[2], args + 3, where, fixed);
    if (opened == Py_None) {
        Py_DECREF(opened);
        return found;
    }
    Py_DECREF(found);
    return opened;
}

/* open_dropped(carrier, spec, baggage_key, now_ns, sent_ns, system, destination, message_id,
 * where): open_unrecorded with spans on, where the handler's span is the sampler-dropped
 * child of the sender's span, made by dropped_hop(remote, None, where) (the Python-level
 * spans.dropped_child in force): the 7-tuple of ou_open when the scope opened; ``(found,)``
 * when the sampler may keep the child (Python goes on without asking again); else what
 * read_incoming gives (None also when it raised an Exception). configure_spans must have
 * been called (hop.py calls this only when hop._dropped_child is dropped_hop). Two more
 * arguments, hop.first_attempt_span_id and hop._destination_salts, give the dropped child
 * the first attempt's span ID (a first delivery's, redelivered=False) instead of a drawn
 * one; a first argument of None there draws it as without them. */
static PyObject *
open_dropped(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 && nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "open_dropped() takes open_unrecorded's 8 arguments, "
                        "where a failure is counted, and optionally how a fixed span ID is "
                        "made");
        return NULL;
    }
    if (dc_spans_module == NULL || dc_failed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "open_dropped: configure_spans was not called");
        return NULL;
    }
    if (!PyUnicode_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "open_dropped(): the baggage key is a str");
        return NULL;
    }
    if (ou_var == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "open_dropped: configure_consume was not called");
        return NULL;
    }
    return ou_entry(module, args, args[8], nargs == 11 && args[9] != Py_None ? args + 9 : NULL);
}

/*
 * hop.dropped_send's common case in one call (core/hop.py): a send under a current span
 * whose child the sampler drops, inside a transaction, with spans on and metrics off. The
 * dropped child (dropped_hop(active, None, "produce_scope.span"), the path hop._dropped_child
 * takes, so a patched spans.dropped_child still takes effect), the send's Context (the
 * current one with that child current, the transaction bound), set on the runtime context's
 * ContextVar, an AttachedSend(token, context), and the headers, written by write_common into
 * the carrier (a dict written in place, or Kafka's new empty list of pairs). Every guard of
 * the Python steps is asked before the child is: what they would treat differently returns
 * NotImplemented with nothing done, except a current Context with no span, for which the
 * steps' own answer, None with nothing done, is given here.
 */
static PyObject *ds_hop = NULL;          /* hop module (its _dropped_child) */
static PyObject *ds_settings = NULL;     /* settings module (its _current) */
static PyObject *ds_metrics = NULL;      /* metrics module (its off_provider) */
static PyObject *ds_source = NULL;       /* metrics.provider_source (its _METER_PROVIDER) */
static PyObject *ds_nrs = NULL;          /* opentelemetry.trace.NonRecordingSpan */
static PyObject *ds_nrs_end = NULL;      /* spans.NRS_END */
static PyObject *ds_nrs_recording = NULL; /* NonRecordingSpan.is_recording, the API's own */
static PyObject *ds_trace_api = NULL;    /* opentelemetry.trace (its _TRACER_PROVIDER) */
static PyObject *ds_seen = NULL;         /* otel_shims._provider_seen: [provider, is an SDK] */
static PyObject *ds_propagation = NULL;  /* propagation module (_propagate_now, _w3c_now, ...) */
static PyObject *ds_var = NULL;          /* the runtime context's ContextVar */
static PyObject *ds_context = NULL;      /* opentelemetry.context.Context */
static PyObject *ds_attached = NULL;     /* hop.AttachedSend */
static PyObject *ds_keys = NULL;  /* (SPAN_KEY, HOP_SPAN_KEY, TRANSACTION_KEY, BAGGAGE_KEY) */
static PyObject *ds_texts = NULL; /* (TRACEPARENT, BAGGAGE, "produce_scope.span",
                                     "produce_scope.open", DEFAULT_TRACE_STATE) */
DC_NAME(off_provider) DC_NAME(_METER_PROVIDER) DC_NAME(end) DC_NAME(is_recording)
DC_NAME(_propagate_now) DC_NAME(_w3c_now) DC_NAME(_write_common) DC_NAME(_names)
DC_NAME(_HTTP_TEXT_FORMAT) DC_NAME(enabled) DC_NAME(propagation_only)
DC_NAME(baggage_mirror) DC_NAME(baggage_key) DC_NAME(settings) DC_NAME(written)
DC_NAME(tight) DC_NAME(transaction) DC_NAME(mirror_prefix) DC_NAME(sent)
DC_NAME(_dropped_child)

/* What dropped_send reads of the settings in force and of propagation._names, kept for the
 * pair it read them from (both held, so neither identity is reused while kept): a Settings
 * is frozen (configure() makes a new one) and _names is rebuilt for each new Settings. */
static PyObject *ds_seen_settings = NULL, *ds_seen_names = NULL;
static struct {
    int usable;          /* enabled, spans on, names.settings is the settings */
    int mirror;          /* settings.baggage_mirror */
    int tight;           /* names.tight */
    PyObject *header;    /* names.written */
    PyObject *read_name; /* names.transaction */
    PyObject *sent;      /* names.sent */
    PyObject *key;       /* settings.baggage_key, when it is names.baggage_key, an exact str */
    PyObject *prefix;    /* names.mirror_prefix (an exact str), or NULL */
} ds_cached;

/* configure_send(hop, settings, metrics, provider_source, NonRecordingSpan, NRS_END,
 * is_recording, opentelemetry.trace, _provider_seen, propagation, ContextVar, Context,
 * AttachedSend, keys, texts): what dropped_send needs (once, by hop.py). */
static PyObject *
configure_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "configure_send takes 15 arguments");
        return NULL;
    }
    if (!PyModule_CheckExact(args[0]) || !PyModule_CheckExact(args[1])
            || !PyModule_CheckExact(args[2]) || !PyType_Check(args[4])
            || !PyModule_CheckExact(args[7]) || !PyList_CheckExact(args[8])
            || PyList_GET_SIZE(args[8]) != 2 || !PyModule_CheckExact(args[9])
            || !PyContextVar_CheckExact(args[10]) || !PyType_Check(args[11])
            || !PyType_IsSubtype((PyTypeObject *)args[11], &PyDict_Type)
            || !PyType_Check(args[12])
            || !PyType_IsSubtype((PyTypeObject *)args[12], &PyTuple_Type)
            || !PyTuple_CheckExact(args[13]) || PyTuple_GET_SIZE(args[13]) != 4
            || !PyTuple_CheckExact(args[14]) || PyTuple_GET_SIZE(args[14]) != 5) {
        PyErr_SetString(PyExc_TypeError, "configure_send: unexpected argument types");
        return NULL;
    }
    PyObject **slots[15] = {&ds_hop, &ds_settings, &ds_metrics, &ds_source, &ds_nrs,
                            &ds_nrs_end, &ds_nrs_recording, &ds_trace_api, &ds_seen,
                            &ds_propagation, &ds_var, &ds_context, &ds_attached, &ds_keys,
                            &ds_texts};
    for (int i = 0; i < 15; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    Py_RETURN_NONE;
}

/* The truth of getattr(obj, name): 1, 0, or -1 with an error set. */
static int
ds_truth(PyObject *obj, const char *text, PyObject **cache)
{
    PyObject *value = dc_attr(obj, text, cache);
    if (value == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

#define DS_TRUTH(obj, name) ds_truth((obj), #name, &dc_name_##name)

/* 1 when the class attribute ``name`` of NonRecordingSpan is ``expected`` (what
 * ``NonRecordingSpan.name is expected`` gives for a plain function), 0 if not, -1. */
static int
ds_nrs_has(const char *text, PyObject **cache, PyObject *expected)
{
    PyObject *name = dc_intern(text, cache);
    if (name == NULL) {
        return -1;
    }
    PyObject *found = _PyType_Lookup((PyTypeObject *)ds_nrs, name);  /* borrowed */
    return found != NULL && found == expected && PyFunction_Check(found);
}

/* The guards of hop.dropped_send and hop._dropped_into that come before the child: 1 when
 * all hold (the borrowed/new values in the out-arguments), 0 when Python must decide, -1. */
typedef struct {
    PyObject *settings, *parent, *active, *tx, *entries, *bag;  /* new references (bag: to bind) */
    PyObject *header, *prefix, *sent, *key;                     /* new references (or None) */
} DsGuards;

static void
ds_release(DsGuards *g)
{
    Py_CLEAR(g->settings);
    Py_CLEAR(g->parent);
    Py_CLEAR(g->active);
    Py_CLEAR(g->tx);
    Py_CLEAR(g->entries);
    Py_CLEAR(g->bag);
    Py_CLEAR(g->header);
    Py_CLEAR(g->prefix);
    Py_CLEAR(g->sent);
    Py_CLEAR(g->key);
}

/* 1 when the value of ``key`` in the exact dict ``d`` is exactly ``tx`` by equality, with both
 * exact str (0 otherwise, -1 on error). */
static int
ds_same_text(PyObject *d, PyObject *key, PyObject *tx)
{
    PyObject *value = PyDict_GetItemWithError(d, key);
    if (value == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (value == tx) {
        return 1;
    }
    if (!PyUnicode_CheckExact(value)) {
        return 0;
    }
    return PyUnicode_Compare(value, tx) == 0 ? 1 : (PyErr_Occurred() ? -1 : 0);
}

/* ds_cached for ``settings`` and ``names`` (read again only when either is another object);
 * 0, or -1 with an error set (then nothing is kept). */
static int
ds_settings_of(PyObject *settings, PyObject *names)
{
    if (settings == ds_seen_settings && names == ds_seen_names) {
        return 0;
    }
    Py_CLEAR(ds_seen_settings);
    Py_CLEAR(ds_seen_names);
    Py_CLEAR(ds_cached.header);
    Py_CLEAR(ds_cached.read_name);
    Py_CLEAR(ds_cached.sent);
    Py_CLEAR(ds_cached.key);
    Py_CLEAR(ds_cached.prefix);
    ds_cached.usable = 0;
    int enabled = DS_TRUTH(settings, enabled);
    int only = enabled < 0 ? -1 : DS_TRUTH(settings, propagation_only);
    int mirror = only < 0 ? -1 : DS_TRUTH(settings, baggage_mirror);
    int tight = mirror < 0 ? -1 : DS_TRUTH(names, tight);
    PyObject *own = tight < 0 ? NULL : DC_ATTR(names, settings);
    PyObject *header = own == NULL ? NULL : DC_ATTR(names, written);
    PyObject *read_name = header == NULL ? NULL : DC_ATTR(names, transaction);
    PyObject *sent = read_name == NULL ? NULL : DC_ATTR(names, sent);
    PyObject *key = sent == NULL ? NULL : DC_ATTR(settings, baggage_key);
    PyObject *names_key = key == NULL ? NULL : DC_ATTR(names, baggage_key);
    PyObject *prefix = names_key == NULL ? NULL : DC_ATTR(names, mirror_prefix);
    if (prefix == NULL) {
        Py_XDECREF(own);
        Py_XDECREF(header);
        Py_XDECREF(read_name);
        Py_XDECREF(sent);
        Py_XDECREF(key);
        Py_XDECREF(names_key);
        return -1;
    }
    ds_cached.usable = enabled && !only && own == settings
        && (header == Py_None || PyUnicode_CheckExact(header));
    ds_cached.mirror = mirror;
    ds_cached.tight = tight;
    ds_cached.header = header;
    ds_cached.read_name = read_name;
    ds_cached.sent = sent;
    if (key == names_key && PyUnicode_CheckExact(key) && PyUnicode_CheckExact(prefix)) {
        ds_cached.key = key;
        ds_cached.prefix = prefix;
    }
    else {  /* (a mirror then goes the Python way) */
        Py_DECREF(key);
        Py_DECREF(prefix);
    }
    Py_DECREF(own);
    Py_DECREF(names_key);
    ds_seen_settings = Py_NewRef(settings);
    ds_seen_names = Py_NewRef(names);
    return 0;
}

/* ds_guards' answer when the current Context (an exact one) has no current span. */
#define DS_NO_SPAN 2

static int
ds_guards(PyObject *carrier, int sent_time, DsGuards *g)
{
    int truth;
    /* settings = _settings._current (or get_settings(): Python's) */
    g->settings = DC_MODULE_ATTR(ds_settings, _current);
    if (g->settings == NULL || g->settings == Py_None) {
        return g->settings == NULL ? -1 : 0;
    }
    /* drops_send_spans(settings): enabled, spans on (ds_settings_of), metrics off, ... */
    PyObject *names = DC_MODULE_ATTR(ds_propagation, _names);
    if (names == NULL) {
        return -1;
    }
    truth = ds_settings_of(g->settings, names);
    Py_DECREF(names);  /* (ds_seen_names holds it) */
    if (truth < 0 || !ds_cached.usable) {
        return truth;
    }
    PyObject *meter = DC_MODULE_ATTR(ds_source, _METER_PROVIDER);
    PyObject *off = meter == NULL ? NULL : DC_MODULE_ATTR(ds_metrics, off_provider);
    Py_XDECREF(meter);  /* (compared by identity only) */
    Py_XDECREF(off);
    if (off == NULL) {
        return -1;
    }
    if (meter != off) {
        return 0;
    }
    if ((truth = ds_nrs_has("end", &dc_name_end, ds_nrs_end)) <= 0
            || (truth = ds_nrs_has("is_recording", &dc_name_is_recording,
                                   ds_nrs_recording)) <= 0) {
        return truth;
    }
    /* the SDK check's cached answer: _provider_seen[1] while _provider_seen[0] is in force */
    PyObject *provider = DC_MODULE_ATTR(ds_trace_api, _TRACER_PROVIDER);
    if (provider == NULL) {
        return -1;
    }
    Py_DECREF(provider);
    if (provider != PyList_GET_ITEM(ds_seen, 0)
            || (truth = PyObject_IsTrue(PyList_GET_ITEM(ds_seen, 1))) <= 0) {
        return provider != PyList_GET_ITEM(ds_seen, 0) ? 0 : truth;
    }
    /* hop._dropped_child is this module's dropped_hop */
    PyObject *child_entry = DC_MODULE_ATTR(ds_hop, _dropped_child);
    if (child_entry == NULL) {
        return -1;
    }
    Py_DECREF(child_entry);
    if (!PyCFunction_Check(child_entry)
            || PyCFunction_GET_FUNCTION(child_entry) != (PyCFunction)(void (*)(void))dropped_hop) {
        return 0;
    }
    /* parent = get_current(): an exact Context; its current span, its transaction (an exact,
     * non-empty str: the one transaction_drawn gives, with no carrier read) */
    if (PyContextVar_Get(ds_var, NULL, &g->parent) < 0) {
        return -1;
    }
    if (g->parent == NULL || Py_TYPE(g->parent) != (PyTypeObject *)ds_context) {
        return 0;
    }
    PyObject *found = PyDict_GetItemWithError(g->parent, PyTuple_GET_ITEM(ds_keys, 0));
    if (found == NULL || found == Py_None) {
        /* no current span: the steps' answer is None, with nothing done (whatever
         * drops_send_spans says, which has no effect), so it is given here */
        return PyErr_Occurred() ? -1 : DS_NO_SPAN;
    }
    g->active = Py_NewRef(found);
    found = PyDict_GetItemWithError(g->parent, PyTuple_GET_ITEM(ds_keys, 2));
    if (found == NULL || !PyUnicode_CheckExact(found) || PyUnicode_GET_LENGTH(found) == 0) {
        return PyErr_Occurred() ? -1 : 0;
    }
    g->tx = Py_NewRef(found);
    /* the writer: W3C propagation, the C writer (the names of these settings: above) */
    PyObject *now = DC_MODULE_ATTR(ds_propagation, _propagate_now);
    if (now == NULL || now == Py_None) {
        Py_XDECREF(now);
        return now == NULL ? -1 : 0;
    }
    PyObject *format = DC_MODULE_ATTR(now, _HTTP_TEXT_FORMAT);
    Py_DECREF(now);
    PyObject *w3c = format == NULL ? NULL : DC_MODULE_ATTR(ds_propagation, _w3c_now);
    PyObject *writer = w3c == NULL ? NULL : DC_MODULE_ATTR(ds_propagation, _write_common);
    int ok = writer != NULL && format == w3c && PyCFunction_Check(writer)
        && PyCFunction_GET_FUNCTION(writer) == (PyCFunction)(void (*)(void))write_common;
    Py_XDECREF(format);
    Py_XDECREF(w3c);
    Py_XDECREF(writer);
    if (!ok) {
        return PyErr_Occurred() ? -1 : 0;
    }
    g->header = Py_NewRef(ds_cached.header);
    if (g->header == Py_None) {
        /* header is not None or not (names.tight or names.transaction in values) */
        if (ds_cached.tight) {
            return 0;
        }
        if (PyDict_CheckExact(carrier)) {
            /* (held: a key's __eq__ may run code that changes ds_cached) */
            PyObject *read_name = Py_NewRef(ds_cached.read_name);
            truth = PyDict_Contains(carrier, read_name);
            Py_DECREF(read_name);
            if (truth != 0) {
                return truth < 0 ? -1 : 0;
            }
        }
    }
    g->sent = Py_NewRef(sent_time ? ds_cached.sent : Py_None);
    /* the baggage: bind_transaction's, then at most the transaction's own entry */
    found = PyDict_GetItemWithError(g->parent, PyTuple_GET_ITEM(ds_keys, 3));
    if (found == NULL && PyErr_Occurred()) {
        return -1;
    }
    int empty = found == NULL || found == Py_None
        || (PyDict_CheckExact(found) && PyDict_GET_SIZE(found) == 0);
    if (!empty && !PyDict_CheckExact(found)) {
        return 0;
    }
    int status = -1;
    PyObject *key = ds_cached.key;
    if (ds_cached.mirror) {
        if (key == NULL) {
            return 0;
        }
        g->key = Py_NewRef(key);  /* (held, as read_name above) */
        key = g->key;
        g->prefix = Py_NewRef(ds_cached.prefix);
        if (empty) {  /* bind_transaction: {key: tx} */
            g->bag = PyDict_New();
            if (g->bag == NULL || PyDict_SetItem(g->bag, key, g->tx) < 0) {
                goto done;
            }
        }
        else {  /* only the transaction's own entry: kept as it is */
            truth = PyDict_GET_SIZE(found) == 1 ? ds_same_text(found, key, g->tx) : 0;
            if (truth <= 0) {
                status = truth;
                goto done;
            }
        }
    }
    else {
        g->prefix = Py_NewRef(Py_None);
        if (!empty) {  /* other entries: render's general case */
            status = 0;
            goto done;
        }
    }
    g->entries = found == NULL ? NULL : Py_NewRef(found);
    if (!PyDict_CheckExact(carrier)) {  /* a new list of pairs: what write_common takes */
        Py_ssize_t size = 0;
        PyObject *written[4];
        int count = 0;
        written[count++] = PyTuple_GET_ITEM(ds_texts, 0);
        if (g->header != Py_None) {
            written[count++] = g->header;
        }
        if (g->prefix != Py_None) {
            written[count++] = PyTuple_GET_ITEM(ds_texts, 1);
        }
        if (g->sent != Py_None) {
            written[count++] = g->sent;
        }
        if (ascii_of(g->tx, &size) == NULL
                || (g->prefix != Py_None && ascii_of(g->prefix, &size) == NULL)
                || !distinct_names(written, count)) {
            status = 0;
            goto done;
        }
    }
    status = 1;
done:
    return status;
}

/* diagnostics.internal_error(where, exc) for the Exception raised (0), or -1 when what was
 * raised is no Exception (it stays raised) or the call fails. */
static int
ds_count(PyObject *where)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *traceback;
    PyErr_Fetch(&type, &exc, &traceback);
    PyErr_NormalizeException(&type, &exc, &traceback);
    if (traceback != NULL && exc != NULL) {
        PyException_SetTraceback(exc, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    if (exc == NULL) {
        return -1;
    }
#endif
    PyObject *call_args[2] = {where, exc};
    PyObject *result = PyObject_Vectorcall(dc_internal_error, call_args, 2, NULL);
    Py_DECREF(exc);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* The send's Context: the current one's values, the child current (SPAN_KEY, HOP_SPAN_KEY),
 * the transaction bound (its key set again; the baggage when bind_transaction makes one),
 * as {**parent}, the stores and Context(scoped) make it (new reference). */
static PyObject *
ds_context_of(DsGuards *g, PyObject *span)
{
    PyObject *ctx = PyObject_CallNoArgs(ds_context);
    if (ctx == NULL) {
        return NULL;
    }
    if (!PyDict_Check(ctx) || PyDict_Update(ctx, g->parent) < 0
            || PyDict_SetItem(ctx, PyTuple_GET_ITEM(ds_keys, 0), span) < 0
            || PyDict_SetItem(ctx, PyTuple_GET_ITEM(ds_keys, 1), span) < 0
            || PyDict_SetItem(ctx, PyTuple_GET_ITEM(ds_keys, 2), g->tx) < 0
            || (g->bag != NULL && PyDict_SetItem(ctx, PyTuple_GET_ITEM(ds_keys, 3), g->bag) < 0)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "Context() is no dict");
        }
        Py_DECREF(ctx);
        return NULL;
    }
    return ctx;
}

/* The child's span context when the C writer takes it as _dropped_into would: an exact
 * 6-tuple SpanContext, valid, of no trace state (None, the default or falsy without a call),
 * IDs the writer formats and int flags; its sampled bit in *sampled (new reference). NULL
 * with no error set: Python decides. */
static PyObject *
ds_child_context(PyObject *span, int *sampled)
{
    PyObject *sc = ri_span_context(span);
    if (sc == NULL) {
        return NULL;
    }
    if ((PyObject *)Py_TYPE(sc) != dc_sp_span_context || PyTuple_GET_SIZE(sc) != 6
            || PyTuple_GET_ITEM(sc, 5) != Py_True) {
        Py_DECREF(sc);
        return NULL;
    }
    PyObject *state = PyTuple_GET_ITEM(sc, 4), *flags = PyTuple_GET_ITEM(sc, 3);
    unsigned long long high, low;
    if ((state != Py_None && state != PyTuple_GET_ITEM(ds_texts, 4))
            || halves_of(PyTuple_GET_ITEM(sc, 0), 128, &high, &low) < 0
            || halves_of(PyTuple_GET_ITEM(sc, 1), 64, &high, &low) < 0
            || !PyLong_Check(flags)
            || Py_TYPE(flags)->tp_as_number == NULL
            || Py_TYPE(flags)->tp_as_number->nb_and != PyLong_Type.tp_as_number->nb_and) {
        Py_DECREF(sc);
        return NULL;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(flags, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_DECREF(sc);
        return NULL;
    }
    /* (flags & 1 of a value over 64 bits: its lowest bit, as the mask gives it) */
    *sampled = overflow ? (int)(PyLong_AsUnsignedLongLongMask(flags) & 1) : (int)(value & 1);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_DECREF(sc);
        return NULL;
    }
    return sc;
}

/* dropped_send(carrier, sent_time, copy[, attach]): hop.dropped_send's common case.
 * Returns NotImplemented with nothing done (Python's steps decide); None when the sampler
 * may keep the child (the send needs its scope; nothing drawn); (carrier, AttachedSend)
 * when done, or (carrier, None) when done with attach false (the headers written, nothing
 * attached); or (span, parent, transaction, settings) when the child was asked for (made,
 * or hop._FAILED) but what follows is Python's (_dropped_into's other cases). */
static PyObject *
dropped_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "dropped_send takes 3 or 4 arguments");
        return NULL;
    }
    if (ds_hop == NULL || dc_spans_module == NULL || dc_failed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "dropped_send: configure_send was not called");
        return NULL;
    }
    PyObject *carrier = args[0];
    int sent_time = PyObject_IsTrue(args[1]);
    int copy = sent_time < 0 ? -1 : PyObject_IsTrue(args[2]);
    int attach = copy < 0 ? -1 : nargs == 4 ? PyObject_IsTrue(args[3]) : 1;
    if (attach < 0) {
        return NULL;
    }
    if (copy || !(PyDict_CheckExact(carrier)
                  || (PyList_CheckExact(carrier) && PyList_GET_SIZE(carrier) == 0))) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    DsGuards g = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    int ready = ds_guards(carrier, sent_time, &g);
    if (ready == DS_NO_SPAN) {  /* (the steps' None: a send with no span to be a child of) */
        ds_release(&g);
        Py_RETURN_NONE;
    }
    if (ready <= 0) {
        ds_release(&g);
        if (ready == 0 || PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear();  /* (Python's steps meet it again, as they would have) */
            Py_RETURN_NOTIMPLEMENTED;
        }
        return NULL;
    }
    PyObject *call_args[3] = {g.active, Py_None, PyTuple_GET_ITEM(ds_texts, 2)};
    PyObject *span = dropped_hop(NULL, call_args, 3);
    PyObject *result = NULL, *sc = NULL, *ctx = NULL, *token = NULL, *attached = NULL;
    int sampled = 0;
    if (span == NULL || span == Py_None) {
        result = Py_XNewRef(span);  /* (None: the child may record, the send needs its scope) */
        goto done;
    }
    if (span != dc_failed) {
        sc = ds_child_context(span, &sampled);
        if (sc == NULL && PyErr_Occurred()) {
            if (ds_count(PyTuple_GET_ITEM(ds_texts, 3)) == 0) {  /* as Python's try counts it */
                result = PyTuple_Pack(2, carrier, Py_None);
            }
            goto done;
        }
    }
    if (sc == NULL) {  /* hop._FAILED, or a span context the rest of Python's steps handle */
        result = PyTuple_Pack(4, span, g.parent, g.tx, g.settings);
        goto done;
    }
    /* attach false: the caller's call runs no user code, and the headers are written from
     * the span context and the guards' values alone (no propagator reads a current
     * context here), so the send's context is neither built nor attached. */
    if (attach) {
        ctx = ds_context_of(&g, span);
        token = ctx == NULL ? NULL : PyContextVar_Set(ds_var, ctx);
        if (token == NULL) {
            if (ds_count(PyTuple_GET_ITEM(ds_texts, 3)) == 0) {
                result = PyTuple_Pack(2, carrier, Py_None);
            }
            goto done;
        }
        /* AttachedSend((token, ctx)) as tuple.__new__ makes it */
        attached = ((PyTypeObject *)ds_attached)->tp_alloc((PyTypeObject *)ds_attached, 2);
        if (attached == NULL) {
            /* (attached, as Python leaves it) */
            if (ds_count(PyTuple_GET_ITEM(ds_texts, 3)) == 0) {
                result = PyTuple_Pack(2, carrier, Py_None);
            }
            goto done;
        }
        PyTuple_SET_ITEM(attached, 0, Py_NewRef(token));
        PyTuple_SET_ITEM(attached, 1, Py_NewRef(ctx));
    }
    PyObject *write_args[11] = {
        carrier, PyTuple_GET_ITEM(sc, 0), PyTuple_GET_ITEM(sc, 1), sampled ? Py_True : Py_False,
        PyTuple_GET_ITEM(ds_texts, 0), g.header, g.tx, PyTuple_GET_ITEM(ds_texts, 1), g.prefix,
        g.sent, Py_None,
    };
    PyObject *wrote = write_common(NULL, write_args, 11);
    if (wrote == Py_False) {  /* (the guards rule this out) */
        PyErr_SetString(PyExc_SystemError, "hoptrace._speedups: dropped_send unchecked");
    }
    if (wrote != Py_True) {
        Py_XDECREF(wrote);
        if (ds_count(PyTuple_GET_ITEM(ds_texts, 3)) < 0) {
            goto done;  /* (no Exception: raised, the context left attached as Python's) */
        }
        if (PyList_CheckExact(carrier) && PyList_SetSlice(carrier, 0, PY_SSIZE_T_MAX, NULL) < 0) {
            goto done;  /* (sent with no headers rather than half of them) */
        }
    }
    else {
        Py_DECREF(wrote);
    }
    result = PyTuple_Pack(2, carrier, attached != NULL ? attached : Py_None);
done:
    Py_XDECREF(span);
    Py_XDECREF(sc);
    Py_XDECREF(ctx);
    Py_XDECREF(token);
    Py_XDECREF(attached);
    ds_release(&g);
    return result;
}

/* send_dropped(carrier, sent_time=True, copy=False, attach=True): hop.dropped_send in one call, where
 * the C entry covers the send; else the Python steps it hands the call to, as hop.dropped_send
 * hands it to them: hop._dropped_rest once the child was asked for, else hop._dropped_send
 * (both given by configure_steps). */
static PyObject *ds_steps = NULL, *ds_rest = NULL;
DC_NAME(carrier) DC_NAME(sent_time) DC_NAME(copy) DC_NAME(attach)

static PyObject *
configure_steps(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "configure_steps takes hop._dropped_send and "
                        "hop._dropped_rest");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(ds_steps, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(ds_rest, args[1]);
    Py_RETURN_NONE;
}

static PyObject *
send_dropped(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *full[4] = {NULL, Py_True, Py_False, Py_True};
    PyObject **names[4] = {&dc_name_carrier, &dc_name_sent_time, &dc_name_copy,
                           &dc_name_attach};
    const char *texts[4] = {"carrier", "sent_time", "copy", "attach"};
    if (nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "dropped_send() takes at most 4 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        full[i] = args[i];
    }
    Py_ssize_t keywords = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < keywords; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int at = -1;
        for (int i = 0; i < 4 && at < 0; i++) {
            PyObject *known = dc_intern(texts[i], names[i]);
            if (known == NULL) {
                return NULL;
            }
            if (PyUnicode_Compare(name, known) == 0) {
                at = i;
            }
        }
        if (at < 0 || at < nargs) {
            PyErr_Format(PyExc_TypeError, "dropped_send() got an unexpected or repeated "
                         "keyword argument %R", name);
            return NULL;
        }
        full[at] = args[nargs + k];
    }
    if (full[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "dropped_send() missing its carrier");
        return NULL;
    }
    if (ds_steps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "send_dropped: configure_steps was not called");
        return NULL;
    }
    PyObject *done = dropped_send(module, full, 4);
    if (done == NULL || done == Py_None) {
        return done;
    }
    if (done == Py_NotImplemented) {
        Py_DECREF(done);
        return PyObject_Vectorcall(ds_steps, full, 4, NULL);
    }
    if (PyTuple_GET_SIZE(done) == 2) {
        return done;
    }
    PyObject *rest_args[8] = {full[0], full[1], full[2], PyTuple_GET_ITEM(done, 0),
                              PyTuple_GET_ITEM(done, 1), PyTuple_GET_ITEM(done, 2),
                              PyTuple_GET_ITEM(done, 3), full[3]};
    PyObject *result = PyObject_Vectorcall(ds_rest, rest_args, 8, NULL);
    Py_DECREF(done);
    return result;
}

/* AttachedSend.close(exc=None) (core/hop.py), installed on the class by configure_close:
 * ContextVar.reset(token) while the attached context is still the current one; anything
 * else (another current context, a token that does not reset, other arguments) is the
 * Python method's, called as it would have been. */
static PyObject *ds_close_python = NULL;  /* the Python AttachedSend.close */

static PyObject *
attached_close(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames == NULL && nargs <= 1 && PyTuple_Check(self) && PyTuple_GET_SIZE(self) == 2
            && ds_var != NULL) {
        PyObject *token = PyTuple_GET_ITEM(self, 0), *current = NULL;
        if (PyContextVar_Get(ds_var, NULL, &current) < 0) {
            return NULL;
        }
        Py_XDECREF(current);  /* (compared by identity only) */
        if (current == PyTuple_GET_ITEM(self, 1) && PyContextToken_CheckExact(token)) {
            if (PyContextVar_Reset(ds_var, token) == 0) {
                Py_RETURN_NONE;
            }
            if (!PyErr_ExceptionMatches(PyExc_ValueError)
                    && !PyErr_ExceptionMatches(PyExc_RuntimeError)) {
                return NULL;
            }
            PyErr_Clear();  /* (reset changed nothing: the Python method counts it) */
        }
    }
    /* the Python method, called as close(self, *args, **kwargs) */
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    PyObject *small[4];
    PyObject **all = total <= 2 ? small : PyMem_New(PyObject *, total + 2);
    if (all == NULL) {
        return PyErr_NoMemory();
    }
    all[0] = NULL;
    all[1] = self;
    for (Py_ssize_t i = 0; i < total; i++) {
        all[i + 2] = args[i];
    }
    PyObject *result = PyObject_Vectorcall(ds_close_python, all + 1,
                                           (size_t)(nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                           kwnames);
    if (all != small) {
        PyMem_Free(all);
    }
    return result;
}

static PyMethodDef ds_close_def = {
    "close", (PyCFunction)(void (*)(void))attached_close, METH_FASTCALL | METH_KEYWORDS,
    "Detach the context, as the send scope's close() would (exc is ignored)."};

/* configure_close(AttachedSend, its Python close): the method to put on the class in its
 * place (configure_send first). */
static PyObject *
configure_close(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || args[0] != ds_attached || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "configure_close takes AttachedSend (as given to "
                        "configure_send) and its close");
        return NULL;
    }
    Py_INCREF(args[1]);
    Py_XSETREF(ds_close_python, args[1]);
    return PyDescr_NewMethod((PyTypeObject *)args[0], &ds_close_def);
}

/* keep_delivery(seen, size, headers, text_id, sent_header, active, span_context_type):
 * hoptrace/_amqp.py's remembering of a first delivery, in one call: the key
 * hash((traceparent, sent, text_id)) that _remembered computes for a dict of headers, then
 * DeliveryMemory.keep(key, (active[0], active[1], int(active[3]))) if active[5] (is_valid),
 * on the memory's OrderedDict ``seen`` of at most ``size`` entries. Returns True when done
 * (a message without identity, or a span context that is not valid, has nothing to keep);
 * False, having changed nothing the Python steps would not change the same way, for anything
 * else: headers not an exact dict, a text_id not None or str, ``active`` not an exact
 * span_context_type tuple, ``seen`` not an exact OrderedDict, a failure inside (then the
 * Python steps run and keep the same entry). A free-threaded build always answers False (its
 * memory takes the lock). The header lookups may run Python code, as headers.get does (a key
 * of a str subclass compared with the names), so the values they find are held as strong
 * references; the memory's steps, on int keys and tuples of ints with the GIL held, run none
 * and are one atomic change to the memory, as keep's lock-free steps allow. */
static PyObject *kd_traceparent = NULL;
static PyObject *kd_popitem = NULL;

/* headers[name] if it is an exact str, else None: a new reference (NULL on an error). */
static PyObject *
kd_text(PyObject *headers, PyObject *name)
{
    PyObject *value = PyDict_GetItemWithError(headers, name);
    if (value == NULL && PyErr_Occurred()) {
        return NULL;
    }
    value = value != NULL && PyUnicode_CheckExact(value) ? value : Py_None;
    Py_INCREF(value);
    return value;
}

static int
kd_keep(PyObject *seen, Py_ssize_t size, PyObject *key, PyObject *entry)
{
    int present = PyDict_Contains(seen, key);
    if (present < 0 || (present && PyODict_DelItem(seen, key) < 0)
            || PyODict_SetItem(seen, key, entry) < 0) {
        return -1;
    }
    if (PyDict_GET_SIZE(seen) > size) {
        PyObject *args[2] = {seen, Py_False};
        PyObject *oldest = PyObject_VectorcallMethod(
            kd_popitem, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (oldest == NULL) {
            return -1;
        }
        Py_DECREF(oldest);
    }
    return 0;
}

static PyObject *
keep_delivery(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "keep_delivery(seen, size, headers, text_id, "
                        "sent_header, active, span_context_type) takes 7 arguments");
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    Py_RETURN_FALSE;
#else
    PyObject *seen = args[0], *headers = args[2], *text_id = args[3], *sent_name = args[4];
    PyObject *active = args[5];
    if (!PyODict_CheckExact(seen) || !PyLong_CheckExact(args[1]) || !PyDict_CheckExact(headers)
            || (text_id != Py_None && !PyUnicode_CheckExact(text_id))
            || !PyUnicode_CheckExact(sent_name) || !PyType_Check(args[6])
            || Py_TYPE(active) != (PyTypeObject *)args[6] || !PyTuple_Check(active)
            || PyTuple_GET_SIZE(active) < 6) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    if (size < 0 || dc_intern("traceparent", &kd_traceparent) == NULL
            || dc_intern("popitem", &kd_popitem) == NULL) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    PyObject *traceparent = kd_text(headers, kd_traceparent);
    PyObject *sent = traceparent == NULL ? NULL : kd_text(headers, sent_name);
    if (sent == NULL) {
        Py_XDECREF(traceparent);
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    /* no identity (_remembered's key is None), or a span context that is not valid: done */
    int valid = traceparent == Py_None && text_id == Py_None ? 0
        : PyObject_IsTrue(PyTuple_GET_ITEM(active, 5));
    PyObject *parts = valid <= 0 ? NULL : PyTuple_Pack(3, traceparent, sent, text_id);
    Py_DECREF(traceparent);
    Py_DECREF(sent);
    if (parts == NULL) {
        if (valid == 0) {
            Py_RETURN_TRUE;
        }
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    Py_hash_t hash = PyObject_Hash(parts);
    Py_DECREF(parts);
    PyObject *key = hash == -1 ? NULL : PyLong_FromSsize_t(hash);
    PyObject *flags = key == NULL ? NULL : PyNumber_Long(PyTuple_GET_ITEM(active, 3));
    PyObject *entry = flags == NULL ? NULL : PyTuple_Pack(
        3, PyTuple_GET_ITEM(active, 0), PyTuple_GET_ITEM(active, 1), flags);
    int failed = entry == NULL || kd_keep(seen, size, key, entry) < 0;
    Py_XDECREF(key);
    Py_XDECREF(flags);
    Py_XDECREF(entry);
    if (failed) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
#endif
}

static PyMethodDef speedups_methods[] = {
    {"read_common", (PyCFunction)(void (*)(void))read_common, METH_FASTCALL,
     "The common case of reading hoptrace's headers from a dict, or None."},
    {"read_pairs", (PyCFunction)(void (*)(void))read_pairs, METH_FASTCALL,
     "read_common for a list or tuple of (str, bytes) header pairs, or None."},
    {"read_incoming", (PyCFunction)(void (*)(void))read_incoming, METH_FASTCALL,
     "read_common or read_pairs, with the span context and baggage built; or None."},
    {"write_common", (PyCFunction)(void (*)(void))write_common, METH_FASTCALL,
     "The common case of writing hoptrace's headers into a dict; False if not handled."},
    {"mint_common", (PyCFunction)(void (*)(void))mint_common, METH_FASTCALL,
     "write_common for a new trace whose IDs come from random bytes; False if not handled."},
    {"record_id", (PyCFunction)(void (*)(void))record_id, METH_FASTCALL,
     "f\"{topic}-{partition}@{offset}\" for an ASCII topic and 64-bit ints; None if not handled."},
    {"pairs_of", (PyCFunction)pairs_of, METH_O,
     "A dict of str header values as a list of (name, UTF-8 bytes) pairs; None if not handled."},
    {"configure_dropped", (PyCFunction)(void (*)(void))configure_dropped, METH_FASTCALL,
     "Give dropped_child what it needs from hoptrace.core._sdk_spans (once)."},
    {"dropped_child", (PyCFunction)(void (*)(void))dropped_child, METH_FASTCALL,
     "_sdk_spans.Starter.dropped_child(starter, parent, span_id), in one call."},
    {"configure_lazy", (PyCFunction)(void (*)(void))configure_lazy, METH_FASTCALL,
     "Give start_lazy what it needs from hoptrace.core._sdk_spans (once)."},
    {"configure_spans", (PyCFunction)(void (*)(void))configure_spans, METH_FASTCALL,
     "Give dropped_span and lazy_span what they need from hoptrace.core.spans (once)."},
    {"start_lazy", (PyCFunction)(void (*)(void))start_lazy, METH_FASTCALL,
     "_sdk_spans.Starter.start_lazy(starter, name, context, kind, attributes): a dropped root "
     "in one call."},
    {"dropped_span", (PyCFunction)(void (*)(void))dropped_span, METH_FASTCALL,
     "spans.dropped_child(parent, span_id) for a span or span context, in one call."},
    {"dropped_hop", (PyCFunction)(void (*)(void))dropped_hop, METH_FASTCALL,
     "hop._dropped_child(parent, span_id, where), in one call."},
    {"configure_ids", (PyCFunction)(void (*)(void))configure_ids, METH_FASTCALL,
     "Give the span entries the SDK's RandomIdGenerator and the API's NonRecordingSpan "
     "methods whose bodies they run inline (once)."},
    {"module_attr", (PyCFunction)(void (*)(void))module_attr, METH_FASTCALL,
     "getattr(module, name) as the entries read a module's globals (for the tests)."},
    {"open_dropped", (PyCFunction)(void (*)(void))open_dropped, METH_FASTCALL,
     "consume_scope._open_dropped's common case (a sampler-dropped span) in one call."},
    {"lazy_span", (PyCFunction)(void (*)(void))lazy_span, METH_FASTCALL,
     "spans.lazy_span(name, context, kind, attributes), in one call."},
    {"configure_consume", (PyCFunction)(void (*)(void))configure_consume, METH_FASTCALL, "Give open_unrecorded what it needs from hoptrace.core.hop (once)."},
    {"open_unrecorded", (PyCFunction)(void (*)(void))open_unrecorded, METH_FASTCALL, "consume_scope._open_unrecorded's common case in one call: the scope's fields, else what read_incoming gives."},
    {"configure_send", (PyCFunction)(void (*)(void))configure_send, METH_FASTCALL,
     "Give dropped_send what it needs from hoptrace.core.hop (once)."},
    {"configure_steps", (PyCFunction)(void (*)(void))configure_steps, METH_FASTCALL,
     "Give send_dropped the Python steps it hands calls to (once)."},
    {"send_dropped", (PyCFunction)(void (*)(void))send_dropped, METH_FASTCALL | METH_KEYWORDS,
     "hop.dropped_send(carrier, sent_time=True, copy=False, attach=True) in one call."},
    {"configure_close", (PyCFunction)(void (*)(void))configure_close, METH_FASTCALL,
     "AttachedSend.close's common case, as a method for the class (once)."},
    {"dropped_send", (PyCFunction)(void (*)(void))dropped_send, METH_FASTCALL,
     "hop.dropped_send's common case in one call; NotImplemented, having done nothing, else."},
    {"keep_delivery", (PyCFunction)(void (*)(void))keep_delivery, METH_FASTCALL,
     "_amqp's remembering of a first delivery (key and DeliveryMemory.keep) in one call; "
     "False, having done nothing, where it does not apply."},
    {NULL, NULL, 0, NULL},
};

static int
speedups_exec(PyObject *module)
{
    init_tables();
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL) {
        return -1;
    }
    Py_XSETREF(time_ns_func, PyObject_GetAttrString(time_module, "time_ns"));
    Py_DECREF(time_module);
    return time_ns_func == NULL ? -1 : 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "hoptrace._speedups",
    "The common case of hoptrace's header reading and writing, in C (optional).",
    0,
    speedups_methods,
    speedups_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
