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

Where the ``cupy`` package can be imported (it can without a GPU), every
function, ufunc and array method the engine uses is also checked to exist in
cupy, so a numpy-only call fails here rather than on the first GPU run.
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


def _host_operand_error(what):
    return TypeError(
        f"a host numpy array was passed to {what}: the device module only takes device arrays "
        "(move it with backend.asarray first)"
    )


def _cupy_api():
    """The real cupy package when importable (for API checks), else None."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


class _Api:
    """Checks names against the real cupy API (no-op without cupy)."""

    def __init__(self, cupy):
        self.cupy = cupy

    def check(self, where, name):
        if self.cupy is None:
            return
        owner = {"xp": self.cupy, "xp.linalg": getattr(self.cupy, "linalg", None),
                 "ndarray": getattr(self.cupy, "ndarray", None)}[where]
        if not hasattr(owner, name):
            raise AttributeError(f"cupy has no {where}.{name}: the GPU code path would fail here")


class _Device:
    """What the arrays of one :class:`DeviceModule` share: its transfer log and API checker."""

    __slots__ = ("log", "api")

    def __init__(self, log, api):
        self.log = log
        self.api = api


class DeviceArray(NDArrayOperatorsMixin):
    """A numpy array that plays a device array (see the module docstring)."""

    __slots__ = ("_a", "_dev")
    __array_priority__ = 100

    def __init__(self, a, dev):
        self._a = a
        self._dev = dev

    # -- what cupy forbids ----------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("implicit conversion of a device array to numpy: use backend.asnumpy")

    def __iter__(self):
        raise TypeError("iterating over a device array row by row: use array operations")

    # -- synchronising reads ----------------------------------------------------------
    def _sync(self):
        self._dev.log.syncs += 1
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
        self._dev.api.check("xp", ufunc.__name__)
        args = _unwrap(inputs, f"np.{ufunc.__name__}")
        if out is not None:
            kwargs["out"] = tuple(_unwrap(out, f"np.{ufunc.__name__}(out=)"))
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result, self._dev)

    def __array_function__(self, func, types, args, kwargs):
        # cupy dispatches numpy's functions to its own (NEP 18): results stay on the device
        self._dev.api.check("xp.linalg" if func.__module__.endswith("linalg") else "xp", func.__name__)
        return _wrap(func(*_unwrap(args, func.__name__), **_unwrap(kwargs, func.__name__)), self._dev)

    # -- the ndarray surface the engine uses --------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T, self._dev))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, "indexing", allow_host=True)], self._dev)

    def __setitem__(self, index, value):
        self._a[_unwrap(index, "indexing", allow_host=True)] = _unwrap(value, "item assignment")



def _array_method(name):
    """The ndarray method ``name`` on a :class:`DeviceArray` (checked against cupy's ndarray)."""

    def method(self, *args, **kwargs):
        self._dev.api.check("ndarray", name)
        result = getattr(self._a, name)(*_unwrap(args, f".{name}()"), **_unwrap(kwargs, f".{name}()"))
        return _wrap(result, self._dev)

    method.__name__ = name
    return method


for _name in ("reshape", "astype", "transpose", "sum", "max", "min", "mean", "copy", "ravel",
              "argmax", "conj", "dot", "fill", "view", "squeeze", "cumsum", "std", "clip", "any", "all"):
    setattr(DeviceArray, _name, _array_method(_name))
del _name


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


def _wrap(obj, dev):
    """Device arrays for the numpy results in ``obj`` (numpy scalars become 0-d arrays, as in cupy)."""
    if isinstance(obj, (np.ndarray, np.generic)):
        return DeviceArray(np.asarray(obj), dev)
    if isinstance(obj, tuple):
        return tuple(_wrap(o, dev) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o, dev) for o in obj]
    return obj


class _Namespace:
    """Functions of a numpy namespace on device arrays."""

    def __init__(self, namespace, dev, where="xp"):
        self._ns = namespace
        self._dev = dev
        self._where = where

    def __getattr__(self, name):
        self._dev.api.check(self._where, name)
        obj = getattr(self._ns, name)
        if isinstance(obj, type) or not callable(obj):
            return obj  # dtypes, constants, exception classes

        def function(*args, **kwargs):
            where = f"xp.{name}"
            return _wrap(obj(*_unwrap(args, where), **_unwrap(kwargs, where)), self._dev)

        function.__name__ = name
        return function


class DeviceModule(_Namespace):
    """The emulated array module (``xp``): numpy's functions plus cupy's ``asarray`` / ``asnumpy``.

    Parameters
    ----------
    log : TransferLog, optional
    check_cupy_api : bool
        Check every name used against the real cupy package, where importable.
    """

    def __init__(self, log=None, check_cupy_api=True):
        dev = _Device(TransferLog() if log is None else log, _Api(_cupy_api() if check_cupy_api else None))
        super().__init__(np, dev)
        self.linalg = _Namespace(np.linalg, dev, "xp.linalg")

    @property
    def transfers(self):
        """The :class:`TransferLog` (not ``log``: that is the logarithm, as in numpy)."""
        return self._dev.log

    @property
    def checks_cupy_api(self):
        """Whether names are checked against a real cupy package."""
        return self._dev.api.cupy is not None

    def asarray(self, x, dtype=None):
        """Device array of ``x``: a host -> device transfer unless ``x`` is on the device already."""
        if isinstance(x, DeviceArray):
            return x if dtype is None or x.dtype == dtype else x.astype(dtype)
        a = np.array(x, dtype=dtype)  # a copy: the device owns its memory
        self._dev.log.to_device += 1
        self._dev.log.to_device_bytes += a.nbytes
        return DeviceArray(a, self._dev)

    def ascontiguousarray(self, x, dtype=None):
        if not isinstance(x, DeviceArray):
            raise _host_operand_error("xp.ascontiguousarray")
        return DeviceArray(np.ascontiguousarray(x._a, dtype=dtype), self._dev)

    def asnumpy(self, x):
        """Host copy of a device array: a device -> host transfer (a host array passes, as in cupy)."""
        if not isinstance(x, DeviceArray):
            return np.asarray(x)
        self._dev.log.to_host += 1
        self._dev.log.to_host_bytes += x.nbytes
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
    return Backend("cupy", xp, *array_module_kernels(xp), default_chunk_size=65536), xp.transfers
