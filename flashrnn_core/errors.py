"""Error classes of flashrnn_core.

Bad arguments raise the builtin ``ValueError`` / ``TypeError`` (see ``validate.py``) so that callers need no
import to catch them; the classes here are for failures that are not the caller's arguments.
"""

from __future__ import annotations


class FlashRNNError(RuntimeError):
    """Base class of the errors flashrnn_core raises beyond ``ValueError``/``TypeError``."""


class CudaUnavailableError(FlashRNNError):
    """A GPU backend was asked for where CuPy, cuda-python or a GPU is missing."""


class CompileError(FlashRNNError):
    """NVRTC rejected a kernel.

    Carries everything needed to reproduce the failure: the NVRTC log, the options and the source with line
    numbers (all in ``str(err)``).
    """

    def __init__(self, label: str, log: str, options: list[str], source: str):
        self.label, self.log, self.options, self.source = label, log, options, source
        numbered = "\n".join(f"{i + 1:5d}  {line}" for i, line in enumerate(source.splitlines()))
        super().__init__(
            f"NVRTC failed to compile {label}\n--- log ---\n{log}\n--- options ---\n{' '.join(options)}\n"
            f"--- source ---\n{numbered}"
        )

    def __reduce__(self):
        # Rebuilt from its four fields, so it crosses process pools (the default pickles only str(self)).
        return (type(self), (self.label, self.log, self.options, self.source))


class KernelNotCachedError(FlashRNNError):
    """``FLASHRNN_CORE_NEVER_COMPILE=1`` is set and a kernel is not in the cache."""
