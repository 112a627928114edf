"""Build glue for the native parts (see native/).

`pip install .` compiles these, nobody runs gcc by hand:
- ``hsmpool._gm_cffi``: SM4, SM3 and SM2 (cffi, API mode), built from ``native/build_gm.py``;
- ``hsmpool._p11_cffi``: the pool's own thin PKCS#11 binding (``native/p11glue.c``) and
  the token-call executors (``native/p11exec.c``);
- ``kms._auditw_cffi``: the audit trail's writer thread (``native/auditw.c``);
- ``hsmpool/_p11shim*.so``: the PKCS#11 shim module (a plain shared library that exports
  ``C_GetFunctionList``; it is loaded with dlopen by the pool, never imported);
- ``hsmpool/libhsmpool-pkcs11.so``: the PKCS#11 module in front of the KMS server
  (``native/pkcs11mod/``, docs/pkcs11.md), for third-party software; a plain shared library
  too, named without Python's extension suffix (``hsmpool.pkcs11_module_path()``).
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PKCS11_MODULE = "hsmpool.libhsmpool-pkcs11"

p11shim = Extension(
    "hsmpool._p11shim",
    sources=["native/p11shim.c"],
    include_dirs=["native", "/usr/include/p11-kit-1"],
    extra_compile_args=["-O2", "-fvisibility=hidden", "-std=gnu11"],
    libraries=["dl"],
)

pkcs11mod = Extension(
    PKCS11_MODULE,
    sources=sorted(str(p) for p in Path("native/pkcs11mod").glob("*.c")),
    include_dirs=["native/pkcs11mod", "/usr/include/p11-kit-1"],
    # tests/native/test_pkcs11_module_build.py builds it with -Werror too
    extra_compile_args=["-O2", "-fvisibility=hidden", "-std=gnu11", "-Wall", "-Wextra"],
    libraries=["ssl", "crypto", "pthread"],
)


class BuildExt(build_ext):
    """Names the PKCS#11 module libhsmpool-pkcs11.so, as PKCS#11 modules are named."""

    def get_ext_filename(self, fullname: str) -> str:
        # called with the dotted name, and (when building) with its last part alone
        if fullname == PKCS11_MODULE:
            return str(Path("hsmpool") / "libhsmpool-pkcs11.so")
        if fullname == PKCS11_MODULE.rsplit(".", 1)[1]:
            return "libhsmpool-pkcs11.so"
        return str(super().get_ext_filename(fullname))

    def get_export_symbols(self, ext: Extension) -> list[str]:
        if ext.name == PKCS11_MODULE:
            return []  # not a Python module: no PyInit_ symbol
        return list(super().get_export_symbols(ext))


setup(
    cmdclass={"build_ext": BuildExt},
    cffi_modules=["native/build_gm.py:ffibuilder", "native/build_p11.py:ffibuilder",
                  "native/build_audit.py:ffibuilder"],
    ext_modules=[p11shim, pkcs11mod],
)
