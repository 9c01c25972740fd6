"""Build of the optional compiled kernels; everything else is in pyproject.toml.

Where no C compiler is at hand the install still succeeds (``optional=True``) and the
participant level uses its numpy/scipy code, which gives the same values to float32 rounding.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bidsapp_dl.extract._kernels",
            sources=["bidsapp_dl/extract/_kernels.c"],
            # IEEE arithmetic, no fused multiply-add: the same bytes from every build
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
            optional=True,
        )
    ],
)
