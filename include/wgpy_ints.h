/* The int objects of packet lengths, made once per value and kept for the module's life.
 *
 * The batch steps write a length per packet into a Python list (the TUN read and UDP receive
 * the packet's, the seal the datagram's, the open and the allowed-IPs check the plaintext's).
 * The values are few (a settled flow's segments are all one size) but the steps alternate them
 * in the same slot, and every value above 256 is a new heap object in CPython: two or three
 * allocations and frees per packet. wgpy_set_length stores a kept object instead.
 *
 * Contract: call with the GIL held (the cache is a module global, written only under the GIL).
 * Values 0 .. WGPY_INTS - 1 are kept (a packet is at most 64 KiB); others are made as usual.
 * Each including module has its own cache (static): at most WGPY_INTS pointers, allocated on
 * first use, and one object per distinct value seen.
 */
#ifndef WGPY_INTS_H
#define WGPY_INTS_H

#include <Python.h>

#define WGPY_INTS 65536

static PyObject **wgpy_ints = NULL;

/* A new reference to the int ``value``; NULL with an exception set on failure. */
static inline PyObject *wgpy_int(Py_ssize_t value)
{
    PyObject *o;
    if (value < 0 || value >= WGPY_INTS)
        return PyLong_FromSsize_t(value);
    if (wgpy_ints == NULL) {
        wgpy_ints = (PyObject **)PyMem_Calloc(WGPY_INTS, sizeof(PyObject *));
        if (wgpy_ints == NULL)
            return PyLong_FromSsize_t(value);
    }
    o = wgpy_ints[value];
    if (o == NULL) {
        o = PyLong_FromSsize_t(value);
        if (o == NULL)
            return NULL;
        wgpy_ints[value] = o; /* the cache's reference */
    }
    Py_INCREF(o);
    return o;
}

/* ``lengths[i] = value`` for an exact list with i < len(lengths) (the caller checks);
 * returns 0, or -1 with an exception set. The old item is released after the store. */
static inline int wgpy_set_length(PyObject *lengths, Py_ssize_t i, Py_ssize_t value)
{
    PyObject *old = PyList_GET_ITEM(lengths, i);
    PyObject *o;
    if (old != NULL && PyLong_CheckExact(old) && wgpy_ints != NULL && value >= 0 && value < WGPY_INTS
            && wgpy_ints[value] == old)
        return 0;
    o = wgpy_int(value);
    if (o == NULL)
        return -1;
    PyList_SET_ITEM(lengths, i, o);
    Py_XDECREF(old);
    return 0;
}

#endif
