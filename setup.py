"""Build the C extension, mempool._mempool, from _core/ (the strategies, C11,
no Python.h) and _native/ (the CPython binding); and the malloc recorder,
mempool/_malloc_record*.so from _preload/ (a preload library for
`python -m mempool record --malloc`, never imported, always built plain: a
sanitizer runtime cannot be preloaded behind it).

Build switches (environment; they combine):
    MEMPOOL_SANITIZE=1   ASan + UBSan, -O1 -g, aborting on the first report
    MEMPOOL_DEBUG=1      MP_DEBUG: the core's assertions, and check() after every call
                         that changes a strategy's state, aborting with its message
                         (_core/internal.h); -O0 -g unless sanitizing too
    MEMPOOL_NO_JOURNAL=1 MP_NO_JOURNAL: the journal compiled out (no crash consistency),
                         only to measure what it costs (bench/journal_before_after.sh)
"""

import os
from glob import glob

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class always_build_ext(build_ext):
    """Recompile every time: pip builds in the source tree, and objects left in
    build/ by a plain build must not be reused by a sanitizer build (or back)."""

    def finalize_options(self):
        super().finalize_options()
        self.force = True


sources = sorted(glob("src/mempool/_core/*.c")) + sorted(glob("src/mempool/_native/*.c"))
cflags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
ldflags = []
sanitize = os.environ.get("MEMPOOL_SANITIZE") == "1"
debug = os.environ.get("MEMPOOL_DEBUG") == "1"
if sanitize:
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    cflags += [*san, "-O1", "-g"]
    ldflags += san
elif debug:
    cflags += ["-O0", "-g"]
else:
    cflags += ["-O2"]
if debug:
    cflags += ["-DMP_DEBUG=1"]
if os.environ.get("MEMPOOL_NO_JOURNAL") == "1":
    cflags += ["-DMP_NO_JOURNAL=1"]

setup(
    cmdclass={"build_ext": always_build_ext},
    ext_modules=[
        Extension(
            "mempool._mempool",
            sources=sources,
            include_dirs=[numpy.get_include()],
            depends=sorted(glob("src/mempool/_core/*.h")) + sorted(glob("src/mempool/_native/*.h")),
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        ),
        Extension(
            "mempool._malloc_record",
            sources=["src/mempool/_preload/malloc_record.c"],
            extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Werror",
                                "-fvisibility=hidden", "-O2"],
            libraries=["pthread"],
        ),
    ]
)
