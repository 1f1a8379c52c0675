"""Compiled calls that turn eager for good when compiling fails, instead of failing the request.

torch.compile compiles at the first call of a shape, so whatever stops the compiler (no C
compiler for Triton's CUDA driver stub or for Inductor's C++ code, a GPU or driver the compiler
does not support, a compiler bug) surfaces in the warm-up or in a request, not at start. Left
alone it fails every warm-up: the service's worker would exit and restart in a loop, never ready.
The compiled path is only an optimisation of the eager one (same weights, same kernels' maths),
so one failure switches every compiled call of the pipeline back to eager for the rest of the
process: one WARNING line names the cause, ``failures`` counts it (the service exports it as
``fastfit_compile_fallbacks_total``) and the failed call is run again eagerly, so the request
that met the failure still gets its image.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch._dynamo.exc
import torch._inductor.exc

__all__ = ["COMPILE_ERRORS", "EagerFallback"]

log = logging.getLogger("fastfit.compile")

# What a failed compilation raises: dynamo wraps the backend's errors (Inductor's, a missing C
# compiler's) in BackendCompilerFailed, a TorchDynamoException; C++ build errors may escape bare.
# Seen on an H200 (torch 2.11, 2026-12-04) with no C compiler on PATH: the first compiled call
# raised InductorError (a BackendCompilerFailed) around Triton's RuntimeError "Failed to find C
# compiler. Please specify via CC environment variable ...".
COMPILE_ERRORS: tuple[type[BaseException], ...] = (
    torch._dynamo.exc.TorchDynamoException,
    torch._inductor.exc.CppCompileError,
)

F = TypeVar("F", bound=Callable[..., Any])


class EagerFallback:
    """One switch for all the compiled calls of a pipeline: the first compile failure turns them
    all eager (a compiler that failed once would fail the next graph too)."""

    def __init__(self) -> None:
        self.failures = 0  # compile failures met (the first one switches to eager; later: none)
        self.reason: str | None = None  # the first failure, one line

    @property
    def eager(self) -> bool:
        return self.reason is not None

    def guard(self, name: str, compiled: F, eager: F) -> F:
        """``compiled`` until a compile failure, then ``eager`` (the failed call is run again eagerly)."""

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.reason is None:
                try:
                    return compiled(*args, **kwargs)
                except COMPILE_ERRORS as exc:
                    self._failed(name, exc)
            return eager(*args, **kwargs)

        return call  # type: ignore[return-value]

    def _failed(self, name: str, exc: BaseException) -> None:
        self.failures += 1
        while getattr(exc, "inner_exception", None) is not None:  # dynamo's wrapper: name the backend's error
            exc = exc.inner_exception
        first_line = (str(exc).strip().splitlines() or [""])[0]
        self.reason = f"{type(exc).__name__}: {first_line[:300]}"
        log.warning(
            "torch.compile failed while compiling the %s (%s); running eager from now on "
            "(slower; FASTFIT_COMPILE=0 skips compiling)", name, self.reason,
        )
