"""cffi build script for the SM algorithms (placeholder until the SM issue lands)."""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("int hsmpool_gm_version(void);")
ffibuilder.set_source("hsmpool._gm_cffi", "int hsmpool_gm_version(void) { return 1; }")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
