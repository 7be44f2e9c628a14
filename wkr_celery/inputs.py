"""What a service takes, and the checks every door applies before an input travels.

Workers advertise their protocol, input shape, dtype and payload limit in the service info; the
client, the REST gateway and the worker itself check inputs against the same :class:`InputSpec`,
so an input is refused with the same words wherever it enters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .codec import tensor_as_array
from .errors import InputError, PayloadTooLarge
from .messages import encode_body

__all__ = ["InputSpec", "DEFAULT_MAX_PAYLOAD", "argsrepr"]

DEFAULT_MAX_PAYLOAD = 5 * 1024 * 1024

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class InputSpec:
    """A service's input contract: protocol, the shape and dtype the worker declares, size limit."""

    protocol: str = "obj"
    shape: Shape | None = None
    dtype: np.dtype[Any] | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD

    @classmethod
    def from_info(cls, info: Mapping[str, str], max_payload: int = DEFAULT_MAX_PAYLOAD
                  ) -> InputSpec:
        """Read the spec from the service info hash (``wkr:<name>:info``)."""
        shape_text = info.get("input_shape", "")
        return cls(
            protocol=info.get("protocol", "obj"),
            shape=tuple(None if p == "*" else int(p) for p in shape_text.split(",")) if shape_text
            else None,
            dtype=np.dtype(info["input_dtype"]) if info.get("input_dtype") else None,
            max_payload=int(info.get("max_payload") or max_payload),
        )

    @classmethod
    def of_worker(cls, protocol: str, shape: Shape | None, dtype: str | None,
                  max_payload: int = DEFAULT_MAX_PAYLOAD) -> InputSpec:
        return cls(protocol, tuple(shape) if shape is not None else None,
                   np.dtype(dtype) if dtype else None, max_payload)

    def info(self) -> dict[str, str]:
        """The fields :meth:`from_info` reads back."""
        shape = "" if self.shape is None else ",".join(
            "*" if d is None else str(d) for d in self.shape)
        return {"protocol": self.protocol, "input_shape": shape,
                "input_dtype": "" if self.dtype is None else self.dtype.name,
                "max_payload": str(self.max_payload)}

    def problem(self, x: Any) -> str | None:
        """Why ``x`` is not what the service takes, or ``None`` when it is.

        A declared shape and dtype bind under both protocols: under ``obj`` an input that is not
        an array is checked as the array it makes (a list of 512 numbers is a ``(512,)`` input),
        so a worker that declares them never sees an input of another shape in ``predict``. A
        torch tensor is checked as the numpy array the encoder sends (:func:`tensor_as_array`:
        detached, on the CPU, bfloat16 widened), exactly as an array: a tensor that needs grad
        raised torch's ``RuntimeError`` here, and an int64 tensor passed as a list of integers
        would, then the worker refused the int64 array it got.
        """
        # A tensor is checked as the array it is sent as; looked for only where an input that
        # is not an array is checked at all: nothing is added for an array, or with no contract.
        if self.protocol == "npy" and not isinstance(x, np.ndarray):
            x = tensor_as_array(x)
            if not isinstance(x, np.ndarray):
                return (f"input is {type(x).__name__}; this service (protocol npy) takes numpy "
                        "arrays")
        if self.shape is None and self.dtype is None:
            return None
        if not isinstance(x, np.ndarray):
            x = tensor_as_array(x)
        array = x if isinstance(x, np.ndarray) else _as_array(x)
        if array is None:
            return f"input is {type(x).__name__}; this service takes {self.show_contract()}"
        if self.shape is not None and (len(self.shape) != array.ndim or any(
                want is not None and want != got for want, got in zip(self.shape, array.shape))):
            return f"input has shape {array.shape}; this service takes {self.show_shape()}"
        if self.dtype is not None and array.dtype != self.dtype:
            # An array must match exactly; numbers in a list only need to fit the dtype.
            if array is x or not _fits_kind(array.dtype, self.dtype):
                return f"input has dtype {array.dtype}; this service takes {self.dtype}"
            return _out_of_range(array, self.dtype)
        return None

    def conform(self, x: Any) -> Any:
        """``x`` as the array :meth:`problem` checked it as, of the declared dtype, once it
        passed: under ``obj`` a list of numbers reaches ``predict`` as that array, so every door
        (a client's list, a REST JSON body, an array) gives ``predict`` the same thing."""
        if isinstance(x, np.ndarray) or (self.shape is None and self.dtype is None):
            return x
        return np.asarray(x, dtype=self.dtype)

    def show_contract(self) -> str:
        """``arrays of shape (512,) and dtype float32``, with the parts the service declares."""
        parts = [f"shape {self.show_shape()}"] if self.shape is not None else []
        parts += [f"dtype {self.dtype}"] if self.dtype is not None else []
        return "arrays of " + " and ".join(parts)

    def show_shape(self) -> str:
        assert self.shape is not None
        text = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"({text},)" if len(self.shape) == 1 else f"({text})"

    def encode(self, x: Any) -> bytes:
        """The request body for ``x``; raises ``InputError`` / ``PayloadTooLarge`` naming why."""
        problem = self.problem(x)
        if problem is not None:
            raise InputError(problem)
        try:
            body = encode_body(x)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"input of type {type(x).__name__} cannot be encoded: {exc}") from None
        if len(body) > self.max_payload:
            raise PayloadTooLarge(
                f"encoded input is {len(body)} bytes; this service takes at most "
                f"{self.max_payload} bytes (-max_payload)")
        return body


def _as_array(x: Any) -> np.ndarray | None:
    """``x`` as a numeric array when it is array-like (numbers, nested lists); else ``None``."""
    if isinstance(x, (str, bytes, dict)) or x is None:
        return None
    try:
        array = np.asarray(x)
    except (ValueError, TypeError):  # ragged lists, objects numpy cannot make an array of
        return None
    return array if array.dtype.kind in "biufc" else None


def _fits_kind(given: np.dtype[Any], wanted: np.dtype[Any]) -> bool:
    """Whether numbers of a list's dtype may become ``wanted``: any kind numpy casts within
    (ints to float), and ints to any integer dtype, unsigned too (their range is checked)."""
    return np.can_cast(given, wanted, "same_kind") or (given.kind in "iu" and wanted.kind in "iu")


def _out_of_range(array: np.ndarray, dtype: np.dtype[Any]) -> str | None:
    """Why integers (from a list) do not fit an integer ``dtype``, or ``None`` when they do."""
    if array.dtype.kind not in "iu" or dtype.kind not in "iu" or not array.size:
        return None
    info = np.iinfo(dtype)
    low, high = array.min(), array.max()
    if low >= info.min and high <= info.max:
        return None
    bad = low if low < info.min else high
    return (f"input holds {bad}, outside {dtype}'s range {info.min}..{info.max}; this service "
            f"takes {dtype}")


def argsrepr(x: Any) -> str:
    """What Flower and ``inspect`` show for an input: its kind and shape, never its data."""
    if isinstance(x, np.ndarray):
        return f"[<ndarray {x.shape} {x.dtype}>]"
    return f"[<{type(x).__name__}>]"
