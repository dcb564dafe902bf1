"""A strict CPU stand-in for a GPU array module: catches host/device mistakes without a GPU.

:class:`DeviceModule` behaves like ``cupy`` where the sweep engine's GPU code
path can go wrong, on numpy arrays:

* arrays made by it are :class:`DeviceArray` objects that refuse implicit
  conversion to numpy (``np.asarray(a)`` raises ``TypeError``, as cupy does),
  refuse to be mixed with host ``numpy.ndarray`` operands (cupy raises
  ``TypeError: Unsupported type``), and cannot be iterated row by row;
* reductions over a whole array give 0-d device arrays, not Python scalars
  (as in cupy), so a value that silently stays on the device is exercised;
* every explicit transfer (``asarray`` of host data, ``asnumpy``) and every
  implicit synchronisation (``float``, ``int``, ``bool``, ``.item()`` of a
  device value) is counted in a :class:`TransferLog`.

``Backend("cupy", module, *array_module_kernels(module))`` is then the cupy
backend's code path, checked for leaks and for how often it talks to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin


@dataclass
class TransferLog:
    """Counts of host <-> device traffic seen by a :class:`DeviceModule`."""

    to_device: int = 0
    to_device_bytes: int = 0
    to_host: int = 0
    to_host_bytes: int = 0
    syncs: int = 0

    def total(self):
        """Every round trip that would stall the device: transfers both ways and scalar syncs."""
        return self.to_device + self.to_host + self.syncs

    def reset(self):
        self.to_device = self.to_device_bytes = self.to_host = self.to_host_bytes = self.syncs = 0


def _host_operand_error(what):
    return TypeError(
        f"a host numpy array was passed to {what}: the device module only takes device arrays "
        "(move it with backend.asarray first)"
    )


class DeviceArray(NDArrayOperatorsMixin):
    """A numpy array that plays a device array (see the module docstring)."""

    __slots__ = ("_a", "_log")
    __array_priority__ = 100

    def __init__(self, a, log):
        self._a = a
        self._log = log

    # -- what cupy forbids ----------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("implicit conversion of a device array to numpy: use backend.asnumpy")

    def __iter__(self):
        raise TypeError("iterating over a device array row by row: use array operations")

    # -- synchronising reads ----------------------------------------------------------
    def _sync(self):
        self._log.syncs += 1
        return self._a

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def item(self):
        return self._sync().item()

    def tolist(self):
        return self._sync().tolist()

    # -- numpy protocols --------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        args = _unwrap(inputs, f"np.{ufunc.__name__}")
        if out is not None:
            kwargs["out"] = tuple(_unwrap(out, f"np.{ufunc.__name__}(out=)"))
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result, self._log)

    def __array_function__(self, func, types, args, kwargs):
        # cupy dispatches numpy's functions to its own (NEP 18): results stay on the device
        return _wrap(func(*_unwrap(args, func.__name__), **_unwrap(kwargs, func.__name__)), self._log)

    # -- the ndarray surface the engine uses --------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T, self._log))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, "indexing", allow_host=True)], self._log)

    def __setitem__(self, index, value):
        self._a[_unwrap(index, "indexing", allow_host=True)] = _unwrap(value, "item assignment")

    def _method(name):
        def method(self, *args, **kwargs):
            result = getattr(self._a, name)(*_unwrap(args, f".{name}()"), **_unwrap(kwargs, f".{name}()"))
            return _wrap(result, self._log)

        method.__name__ = name
        return method

    for _name in ("reshape", "astype", "transpose", "sum", "max", "min", "mean", "copy", "ravel",
                  "argmax", "conj", "dot", "fill", "view", "squeeze", "cumsum", "std", "clip", "any", "all"):
        locals()[_name] = _method(_name)
    del _name, _method


def _unwrap(obj, what, allow_host=False):
    """Numpy arrays out of device arrays inside ``obj``; host arrays refused unless ``allow_host``."""
    if isinstance(obj, DeviceArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        if allow_host:
            return obj
        raise _host_operand_error(what)
    if isinstance(obj, tuple):
        return tuple(_unwrap(o, what, allow_host) for o in obj)
    if isinstance(obj, list):
        return [_unwrap(o, what, allow_host) for o in obj]
    if isinstance(obj, dict):
        return {k: _unwrap(v, what, allow_host) for k, v in obj.items()}
    return obj


def _wrap(obj, log):
    """Device arrays for the numpy results in ``obj`` (numpy scalars become 0-d arrays, as in cupy)."""
    if isinstance(obj, (np.ndarray, np.generic)):
        return DeviceArray(np.asarray(obj), log)
    if isinstance(obj, tuple):
        return tuple(_wrap(o, log) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o, log) for o in obj]
    return obj


class _Namespace:
    """Functions of a numpy namespace on device arrays."""

    def __init__(self, namespace, log):
        self._ns = namespace
        self._log = log

    def __getattr__(self, name):
        obj = getattr(self._ns, name)
        if isinstance(obj, type) or not callable(obj):
            return obj  # dtypes, constants, exception classes

        def function(*args, **kwargs):
            where = f"xp.{name}"
            return _wrap(obj(*_unwrap(args, where), **_unwrap(kwargs, where)), self._log)

        function.__name__ = name
        return function


class DeviceModule(_Namespace):
    """The emulated array module (``xp``): numpy's functions plus cupy's ``asarray`` / ``asnumpy``.

    Parameters
    ----------
    log : TransferLog, optional
    """

    def __init__(self, log=None):
        super().__init__(np, TransferLog() if log is None else log)
        self.linalg = _Namespace(np.linalg, self._log)

    @property
    def transfers(self):
        """The :class:`TransferLog` (not ``log``: that is the logarithm, as in numpy)."""
        return self._log

    def asarray(self, x, dtype=None):
        """Device array of ``x``: a host -> device transfer unless ``x`` is on the device already."""
        if isinstance(x, DeviceArray):
            return x if dtype is None or x.dtype == dtype else x.astype(dtype)
        a = np.array(x, dtype=dtype)  # a copy: the device owns its memory
        self._log.to_device += 1
        self._log.to_device_bytes += a.nbytes
        return DeviceArray(a, self._log)

    def ascontiguousarray(self, x, dtype=None):
        if not isinstance(x, DeviceArray):
            raise _host_operand_error("xp.ascontiguousarray")
        return DeviceArray(np.ascontiguousarray(x._a, dtype=dtype), self._log)

    def asnumpy(self, x):
        """Host copy of a device array: a device -> host transfer."""
        if not isinstance(x, DeviceArray):
            raise TypeError(f"asnumpy of a {type(x).__name__}, not a device array: it is on the host already")
        self._log.to_host += 1
        self._log.to_host_bytes += x.nbytes
        return x._a.copy()


def emulated_device_backend(log=None):
    """A :class:`~tnlearn.backend.Backend` named ``"cupy"`` on a :class:`DeviceModule`.

    Returns
    -------
    backend : Backend
    log : TransferLog
    """
    from tnlearn.backend import Backend, array_module_kernels

    xp = DeviceModule(log)
    return Backend("cupy", xp, *array_module_kernels(xp)), xp.transfers
