"""Build glue for the native parts (see native/).

`pip install .` compiles these, nobody runs gcc by hand:
- ``hsmpool._gm_cffi``: SM4, SM3 and SM2 (cffi, API mode), built from ``native/build_gm.py``;
- ``hsmpool._p11_cffi``: the pool's own thin PKCS#11 binding (``native/p11glue.c``) and
  the token-call executors (``native/p11exec.c``);
- ``kms._auditw_cffi``: the audit trail's writer thread (``native/auditw.c``);
- ``hsmpool/_p11shim*.so``: the PKCS#11 shim module (a plain shared library that exports
  ``C_GetFunctionList``; it is loaded with dlopen by the pool, never imported).
"""

from setuptools import Extension, setup

p11shim = Extension(
    "hsmpool._p11shim",
    sources=["native/p11shim.c"],
    include_dirs=["native", "/usr/include/p11-kit-1"],
    extra_compile_args=["-O2", "-fvisibility=hidden", "-std=gnu11"],
    libraries=["dl"],
)

setup(
    cffi_modules=["native/build_gm.py:ffibuilder", "native/build_p11.py:ffibuilder",
                  "native/build_audit.py:ffibuilder"],
    ext_modules=[p11shim],
)
