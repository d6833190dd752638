# The Cython declaration of include/wgpy_ints.h (read its contract there), cimported by every
# extension module that writes batch lengths: ``from wgpy_ints cimport wgpy_set_length``
# (setup.py puts this folder on both Cython's and the C compiler's include paths).

cdef extern from "wgpy_ints.h":
    # ``lengths[i] = value`` with one kept int object per value; exact list, i < len(lengths)
    # checked by the caller, GIL held
    int wgpy_set_length(list lengths, Py_ssize_t i, Py_ssize_t value) except -1
