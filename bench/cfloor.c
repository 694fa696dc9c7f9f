/* The least a span the sampler drops can cost when it is built in C (bench only, never
 * shipped): bench/callgrind_spans.py compiles it on first use for its ``cfloor_*`` cases.
 *
 * The steps no implementation can leave out, done the cheapest way the C API allows, with
 * no check around them: the SDK's RandomIdGenerator's draws (random.getrandbits, drawn
 * again while it gives the invalid ID 0), the SpanContext tuple as tuple.__new__ makes it,
 * the API's NonRecordingSpan with its _context, and for a root the TraceIdRatioBased
 * decision on the trace ID. Everything else a real entry does (reading the settings, the
 * provider, the sampler and the classes in force, counting, attaching) is left out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *empty = NULL;  /* () */

static PyObject *
draw(PyObject *getrandbits, PyObject *bits)
{
    for (;;) {
        PyObject *id = PyObject_CallOneArg(getrandbits, bits);
        if (id == NULL || !PyLong_CheckExact(id) || _PyLong_Sign(id) != 0) {
            return id;
        }
        Py_DECREF(id);
    }
}

/* NonRecordingSpan(SpanContext(trace_id, span_id, False, flags, state, True)) */
static PyObject *
build(PyObject *nrs, PyObject *span_context, PyObject *context_name, PyObject *trace_id,
      PyObject *span_id, PyObject *flags, PyObject *state)
{
    PyTypeObject *type = (PyTypeObject *)span_context;
    PyObject *context = type->tp_alloc(type, 6);
    if (context == NULL) {
        return NULL;
    }
    PyObject *items[6] = {trace_id, span_id, Py_False, flags, state, Py_True};
    for (Py_ssize_t i = 0; i < 6; i++) {
        PyTuple_SET_ITEM(context, i, Py_NewRef(items[i]));
    }
    /* (object.__new__: the instance's attribute storage set up as Python sets it up) */
    PyObject *span = PyBaseObject_Type.tp_new((PyTypeObject *)nrs, empty, NULL);
    if (span != NULL && PyObject_SetAttr(span, context_name, context) < 0) {
        Py_CLEAR(span);
    }
    Py_DECREF(context);
    return span;
}

/* child(getrandbits, bits64, trace_id, flags, state, SpanContext, NonRecordingSpan, "_context"):
 * a dropped child of a span of trace ``trace_id``. */
static PyObject *
child(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "child takes 8 arguments");
        return NULL;
    }
    PyObject *span_id = draw(args[0], args[1]);
    if (span_id == NULL) {
        return NULL;
    }
    PyObject *span = build(args[6], args[5], args[7], args[2], span_id, args[3], args[4]);
    Py_DECREF(span_id);
    return span;
}

/* root(getrandbits, bits64, bits128, limit, bound, flags, state, SpanContext,
 * NonRecordingSpan, "_context"): a transaction's root the ratio drops, or None where it
 * keeps it (the recorded 1%, counted apart). */
static PyObject *
root(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "root takes 10 arguments");
        return NULL;
    }
    PyObject *trace_id = draw(args[0], args[2]);
    if (trace_id == NULL) {
        return NULL;
    }
    PyObject *low = PyNumber_And(trace_id, args[3]);
    int kept = low == NULL ? -1 : PyObject_RichCompareBool(low, args[4], Py_LT);
    Py_XDECREF(low);
    if (kept != 0) {
        Py_DECREF(trace_id);
        return kept < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *span_id = draw(args[0], args[1]);
    PyObject *span = span_id == NULL ? NULL
        : build(args[8], args[7], args[9], trace_id, span_id, args[5], args[6]);
    Py_XDECREF(span_id);
    Py_DECREF(trace_id);
    return span;
}

static PyMethodDef methods[] = {
    {"child", (PyCFunction)(void (*)(void))child, METH_FASTCALL, NULL},
    {"root", (PyCFunction)(void (*)(void))root, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cfloor", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__cfloor(void)
{
    if (empty == NULL && (empty = PyTuple_New(0)) == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
