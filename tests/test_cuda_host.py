"""The generated CUDA kernels *executed* on the CPU, compared with the numba backend.

No GPU is needed: a fake ``cupy`` module (numpy-backed, installed into ``sys.modules`` by the
``fake_cupy`` fixture) implements exactly the part of the CuPy API that the CUDA backend
(:class:`~sdederive.simulate.backends.cuda_backend.CudaBackend`) uses.  Its ``RawModule`` compiles the generated CUDA C as host C++ with
g++ behind a small shim (``__global__``/``__device__`` defined away, ``threadIdx``/``blockIdx``/...
as globals, ``__clzll``, ``__dmul_rn``) plus an ``extern "C"`` launcher per ``__global__`` kernel that loops over
the grid and block, called through ctypes.  The fake does memory movement, launches and the
reductions ``CudaBackend.run_chunk`` asks for, nothing else, and it is strict where a GPU would fail silently:
kernel arguments must have the exact C type of the kernel's parameter, device arrays must be
C-contiguous, device memory is surrounded by guard bytes checked after every launch, ``empty``
returns NaN-filled memory, local variables of the kernels start from a non-zero pattern
(``-ftrivial-auto-var-init=pattern``), and a device array never converts implicitly to numpy.

The Gaussians are bit-identical between the C and numba implementations (no FMA contraction:
``-ffp-contract=off``), and so is a single path wherever sympy's C and Python printers emit the same
operations in the same order (:func:`test_single_path_bit_for_bit`).  Elsewhere the printers order
sums and products differently (``1.0/w1*(...)`` against ``(...)/w1``, ``x**4`` against
``x*x*x*x``), and the statistics are reduced differently (the CUDA path sums over paths,
``s2 - n mu^2``; the numba path runs Welford per block and combines the blocks): measured, the means
then differ by at most ~5e-15 relative and the variances by ~1e-14 of ``var + mean^2``.  The
tolerance is 1e-10 relative (variances: of ``var + mean^2``, the scale of the cancellation in
``s2 - n mu^2``), far above that rounding and far below any logic error.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import re
import shutil
import subprocess
import sys
import types
import uuid

import numpy as np
import pytest
import sympy as sp

import sdederive as sd
from sdederive.problems import Custom, LogisticRegression, Quadratic
from sdederive.simulate.backends import cuda_backend
from tests.helpers import CUDA_BUILTINS_ON_HOST

GXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(GXX is None, reason="needs g++ to build the generated CUDA kernels as host code")

# -- the fake CuPy ----------------------------------------------------------------------------------------

_GUARD = 4096  # bytes of guard on each side of every device allocation, at least (or the allocation's size)
_GUARD_BYTE = 0xFF  # reads past the end see NaN (double) or -1 (integers)

_SHIM = r"""
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
using std::sqrt; using std::exp; using std::log; using std::log1p; using std::expm1; using std::fabs;
using std::pow; using std::fmax; using std::fmin; using std::erf; using std::erfc; using std::atan;
using std::tanh; using std::sin; using std::cos; using std::copysign; using std::floor; using std::ceil;
using std::isfinite; using std::isnan; using std::isinf;
struct sdhost_dim3 { unsigned int x, y, z; };
static sdhost_dim3 threadIdx, blockIdx, blockDim, gridDim;
""" + CUDA_BUILTINS_ON_HOST + """
#line 1 "generated.cu"
"""

# C parameter type -> (ctypes type, numpy dtype of the argument CuPy must be given)
_SCALARS = {
    "int": (ctypes.c_int, np.int32), "unsigned int": (ctypes.c_uint, np.uint32),
    "long long": (ctypes.c_longlong, np.int64), "unsigned long long": (ctypes.c_ulonglong, np.uint64),
    "double": (ctypes.c_double, np.float64), "float": (ctypes.c_float, np.float32),
}
_POINTEES = {"double": np.float64, "float": np.float32, "long long": np.int64, "int": np.int32,
             "unsigned int": np.uint32, "unsigned long long": np.uint64, "bool": np.bool_}


@functools.cache
def _gxx() -> tuple[tuple[str, ...], str]:
    """(flags, version text) of the host compiler."""
    return tuple(_gxx_flags()), subprocess.run([GXX, "--version"], capture_output=True, text=True).stdout


def _gxx_flags() -> list[str]:
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]
    probe = subprocess.run([GXX, "-ftrivial-auto-var-init=pattern", "-x", "c++", "-fsyntax-only", "-"],
                           input="int main() { return 0; }\n", capture_output=True, text=True)
    if probe.returncode == 0:  # uninitialised locals read as a poison pattern, as garbage would on a GPU
        flags.append("-ftrivial-auto-var-init=pattern")
    return flags


class DevArray:
    """Device memory: a numpy array inside a guarded allocation.  Arithmetic gives new device arrays;
    like CuPy, no implicit conversion to numpy (use ``asnumpy``) and no numpy arrays as operands."""

    __array_ufunc__ = None

    def __init__(self, a: np.ndarray, raw: np.ndarray, guard: int):
        self._a, self._raw, self._guard = a, raw, guard

    # construction
    @classmethod
    def alloc(cls, shape, dtype, fill=None) -> DevArray:
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        guard = max(_GUARD, (nbytes + 63) // 64 * 64)  # an overrun by up to a whole array is caught
        raw = np.full(nbytes + 2 * guard, _GUARD_BYTE, dtype=np.uint8)
        a = raw[guard:guard + nbytes].view(dtype).reshape(shape)
        if fill is not None:
            a[...] = fill
        return cls(a, raw, guard)

    @classmethod
    def from_host(cls, a) -> DevArray:
        a = np.asarray(a)
        out = cls.alloc(a.shape, a.dtype)
        out._a[...] = a
        return out

    def guards_intact(self) -> bool:
        g = self._guard
        return bool(np.all(self._raw[:g] == _GUARD_BYTE) and np.all(self._raw[-g:] == _GUARD_BYTE))

    # attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)

    def get(self) -> np.ndarray:
        return self._a.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __len__(self):
        return len(self._a)

    def __getitem__(self, idx):
        if isinstance(idx, DevArray) or (isinstance(idx, tuple) and any(isinstance(i, DevArray) for i in idx)):
            raise NotImplementedError("fake cupy: advanced indexing with device arrays")
        v = self._a[idx]
        if isinstance(v, np.ndarray) and np.shares_memory(v, self._a):
            return DevArray(v, self._raw, self._guard)
        return DevArray.from_host(v)

    def __setitem__(self, idx, value):
        self._a[idx] = _operand(value)

    def __bool__(self):
        if self._a.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        return bool(self._a.reshape(()))

    def __int__(self):
        if self._a.size != 1:
            raise TypeError("only length-1 arrays can be converted to Python scalars")
        return int(self._a.reshape(()))

    def __float__(self):
        if self._a.size != 1:
            raise TypeError("only length-1 arrays can be converted to Python scalars")
        return float(self._a.reshape(()))

    # reductions
    def sum(self, axis=None):
        return DevArray.from_host(np.asarray(self._a.sum(axis=axis)))

    def any(self, axis=None):
        return DevArray.from_host(np.asarray(self._a.any(axis=axis)))

    def all(self, axis=None):
        return DevArray.from_host(np.asarray(self._a.all(axis=axis)))

    def __iadd__(self, other):
        self._a += _operand(other)
        return self

    def __repr__(self):
        return f"fake_cupy.array({self._a!r})"


def _operand(v):
    if isinstance(v, DevArray):
        return v._a
    if isinstance(v, np.ndarray):
        raise TypeError(f"Unsupported type {type(v)}: a numpy array cannot be an operand of a device array")
    if isinstance(v, (bool, int, float, np.generic)):
        return v
    raise TypeError(f"Unsupported type {type(v)}")


def _binop(f, reflected=False):
    def op(self, other):
        try:
            o = _operand(other)
        except TypeError:
            return NotImplemented
        with np.errstate(all="ignore"):  # CuPy does not warn on overflow
            return DevArray.from_host(np.asarray(f(o, self._a) if reflected else f(self._a, o)))
    return op


for _name, _f in {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
                  "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                  "eq": np.equal, "ne": np.not_equal, "and": np.logical_and, "or": np.logical_or}.items():
    setattr(DevArray, f"__{_name}__", _binop(_f))
    if _name in ("add", "sub", "mul", "truediv", "and", "or"):
        setattr(DevArray, f"__r{_name}__", _binop(_f, reflected=True))
DevArray.__neg__ = lambda self: DevArray.from_host(-self._a)


def _c_type(text: str) -> str:
    return " ".join(text.replace("const", " ").replace("__restrict__", " ").split())


def _kernel_signatures(code: str) -> dict:
    """``{name: [(base C type, is pointer, declared type, name), ...]}`` of every ``extern "C" __global__`` kernel."""
    out = {}
    for m in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', code):
        params = []
        for p in m.group(2).split(","):
            decl = " ".join(p.split())
            name = re.search(r"(\w+)$", decl).group(1)
            typ = decl[: -len(name)].strip()
            if typ.count("*") > 1:
                raise NotImplementedError(f"fake cupy: kernel parameter {decl!r}")
            params.append((_c_type(typ.replace("*", " ")), "*" in typ, typ, name))
        out[m.group(1)] = params
    return out


def _launcher(name: str, params) -> str:
    sig = ", ".join(f"{typ} {pn}" for _, _, typ, pn in params)
    fwd = ", ".join(pn for *_, pn in params)
    return (f'extern "C" void sdhost_launch_{name}(unsigned int gx, unsigned int gy, unsigned int gz, '
            f"unsigned int bx, unsigned int by, unsigned int bz{', ' if sig else ''}{sig}) {{\n"
            "    gridDim.x = gx; gridDim.y = gy; gridDim.z = gz; blockDim.x = bx; blockDim.y = by; blockDim.z = bz;\n"
            "    for (unsigned int z = 0; z < gz; ++z) for (unsigned int y = 0; y < gy; ++y)\n"
            "    for (unsigned int x = 0; x < gx; ++x) {\n"
            "        blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;\n"
            "        for (unsigned int tz = 0; tz < bz; ++tz) for (unsigned int ty = 0; ty < by; ++ty)\n"
            "        for (unsigned int tx = 0; tx < bx; ++tx) {\n"
            "            threadIdx.x = tx; threadIdx.y = ty; threadIdx.z = tz;\n"
            f"            {name}({fwd});\n"
            "        }\n    }\n}\n")


class _Build:
    """One g++ run, started in the background (so a numba compile can overlap it) and waited for at the
    first launch, like CuPy's lazy module load."""

    def __init__(self, so, proc=None, cpp=None, tmp=None):
        self._so, self._proc, self._cpp, self._tmp, self._lib = so, proc, cpp, tmp, None

    def lib(self):
        if self._lib is None:
            if self._proc is not None:
                _, err = self._proc.communicate()
                if self._proc.returncode != 0:
                    raise RuntimeError(f"g++ failed on the generated CUDA source ({self._cpp}):\n{err[-4000:]}")
                self._tmp.replace(self._so)
                self._proc = None
            self._lib = ctypes.CDLL(str(self._so))
        return self._lib


class _Function:
    def __init__(self, build, name, params, log):
        self._build, self.name, self._params, self._log, self._fn = build, name, params, log, None

    def _resolve(self):
        self._fn = getattr(self._build.lib(), f"sdhost_launch_{self.name}")
        self._fn.restype = None
        params = self._params
        argtypes = [ctypes.c_uint] * 6
        for ctype, ptr, typ, pn in params:
            if ptr:
                if ctype not in _POINTEES:
                    raise NotImplementedError(f"fake cupy: pointer parameter {typ} {pn}")
                argtypes.append(ctypes.c_void_p)
            elif ctype in _SCALARS:
                argtypes.append(_SCALARS[ctype][0])
            else:
                raise NotImplementedError(f"fake cupy: scalar parameter {typ} {pn}")
        self._fn.argtypes = argtypes

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        if self._fn is None:
            self._resolve()
        if shared_mem:
            raise NotImplementedError("fake cupy: dynamic shared memory")
        dims = []
        for what, v in (("grid", grid), ("block", block)):
            v = tuple(int(x) for x in v)
            if not 1 <= len(v) <= 3 or min(v) < 1:
                raise ValueError(f"{self.name}: invalid {what} {v}")
            dims.extend(v + (1,) * (3 - len(v)))
        if dims[3] * dims[4] * dims[5] > 1024:
            raise ValueError(f"{self.name}: block {block} has more than 1024 threads")
        if len(args) != len(self._params):
            raise TypeError(f"{self.name} takes {len(self._params)} arguments, got {len(args)}")
        cargs, devs = [], []
        for a, (ctype, ptr, typ, pn) in zip(args, self._params):
            if ptr:
                if not isinstance(a, DevArray):
                    raise TypeError(f"{self.name}: parameter {typ} {pn} needs a device array, got {type(a)}")
                if a.dtype != _POINTEES[ctype]:
                    raise TypeError(f"{self.name}: parameter {typ} {pn} got a {a.dtype} array, "
                                    f"not {np.dtype(_POINTEES[ctype])}")
                if not a._a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: parameter {typ} {pn} got a non-contiguous array")
                cargs.append(a._a.ctypes.data)
                devs.append((pn, a))
            else:
                want = _SCALARS[ctype][1]
                if not isinstance(a, np.generic) or a.dtype != want:
                    raise TypeError(f"{self.name}: parameter {typ} {pn} needs a numpy {np.dtype(want).name} "
                                    f"scalar (CuPy passes {type(a).__name__} with its own size), got {a!r}")
                cargs.append(a.item())
        self._log.append((self.name, tuple(dims), tuple(args)))
        self._fn(*dims, *cargs)
        for pn, a in devs:
            if not a.guards_intact():
                raise AssertionError(f"{self.name} wrote outside the device array passed as {pn}")


class FakeCupy(types.ModuleType):
    """The CuPy subset that ``CudaBackend`` (build, start, run_chunk, finish) uses."""

    def __init__(self, build_dir):
        super().__init__("cupy")
        self._dir = build_dir
        self._flags, self._version = _gxx()
        self._builds: dict = {}
        self.launches: list = []  # (kernel, grid + block, args) of every launch
        self.modules: list = []  # (code, options) of every RawModule
        self.float64, self.float32, self.int64, self.int32 = np.float64, np.float32, np.int64, np.int32
        self.ndarray = DevArray
        fake = self

        class _Device:
            def __init__(self, i=0):
                self.id = i

            def synchronize(self):
                pass

        self.cuda = types.SimpleNamespace(is_available=lambda: True, Device=_Device)

        class RawModule:
            def __init__(self, code=None, options=(), name_expressions=None, backend="nvrtc", **kw):
                if kw:
                    raise TypeError(f"fake cupy: RawModule got unexpected arguments {sorted(kw)}")
                fake.modules.append((code, tuple(options)))
                self._build, self._sigs = fake._compile(code, tuple(options))
                self._functions = {}

            def get_function(self, name):
                if name not in self._sigs:
                    raise KeyError(f"no __global__ function {name!r} in the module")
                if name not in self._functions:
                    self._functions[name] = _Function(self._build, name, self._sigs[name], fake.launches)
                return self._functions[name]

        self.RawModule = RawModule

    def finish_builds(self) -> None:
        """Wait for the g++ runs still going (modules never launched), so that none is left behind."""
        for b in self._builds.values():
            try:
                b.lib()
            except RuntimeError:
                pass

    def _compile(self, code: str, options: tuple):
        for bad in ("__syncthreads", "__shared__", "atomic", "__shfl", "warpSize"):
            if bad in code:
                raise NotImplementedError(f"fake cupy: threads run one after another, {bad} cannot be emulated")
        std = "-std=c++17"
        for o in options:
            if o.startswith(("--std=", "-std=")):
                std = "-std=" + o.split("=", 1)[1]
            elif o not in ("--fmad=false", "-fmad=false", "--fmad=true"):
                raise NotImplementedError(f"fake cupy: compiler option {o!r}")
        sigs = _kernel_signatures(code)
        src = _SHIM + code + "\n#line 1 \"launchers\"\n" + "".join(_launcher(n, p) for n, p in sigs.items())
        flags = [f for f in self._flags if not f.startswith("-std=")] + [std]
        key = hashlib.sha256("\0".join([src, *flags, self._version]).encode()).hexdigest()[:20]
        if key not in self._builds:
            so = self._dir / f"k_{key}.so"
            if so.exists():
                self._builds[key] = _Build(so)
            else:
                cpp = self._dir / f"k_{key}.cpp"
                cpp.write_text(src)
                tmp = self._dir / f"k_{key}.{uuid.uuid4().hex}.so"  # then renamed: a reader never sees half
                proc = subprocess.Popen([GXX, *flags, "-o", str(tmp), str(cpp)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
                self._builds[key] = _Build(so, proc, cpp, tmp)
        return self._builds[key], sigs

    # arrays
    def asarray(self, a, dtype=None):
        if isinstance(a, DevArray):
            return a if dtype is None or a.dtype == dtype else DevArray.from_host(a._a.astype(dtype))
        return DevArray.from_host(np.asarray(a, dtype=dtype))

    def asnumpy(self, a):
        return a.get() if isinstance(a, DevArray) else np.asarray(a)

    def empty(self, shape, dtype=np.float64):
        fill = np.nan if np.dtype(dtype).kind in "fc" else None  # uninitialised: NaN or the guard bytes
        return DevArray.alloc(shape, dtype, fill)

    def zeros(self, shape, dtype=np.float64):
        return DevArray.alloc(shape, dtype, 0)

    def where(self, cond, x, y):
        return DevArray.from_host(np.where(_operand(cond), _operand(x), _operand(y)))

    def maximum(self, a, b):
        return DevArray.from_host(np.maximum(_operand(a), _operand(b)))


@pytest.fixture(scope="session")
def _build_dir(request, tmp_path_factory):
    """Shared objects by content hash (source, flags, g++ version): in pytest's cache directory, so a
    second session does not rebuild them; a session tmp dir if the cache plugin is off."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("sdederive_cuda_host") if cache is not None else tmp_path_factory.mktemp("cuda_host")


@pytest.fixture
def fake_cupy(monkeypatch, _build_dir):
    fake = FakeCupy(_build_dir)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    yield fake
    fake.finish_builds()


# -- comparison -------------------------------------------------------------------------------------------


def _both(target, prob, fake, dtype="float64", scheme="euler", **run):
    """(numba result, CUDA-on-host result) of the same run.  The CUDA module first: g++ then builds it
    while numba compiles."""
    cuda = sd.compile(target, prob, backend="cupy", dtype=dtype, scheme=scheme)
    assert fake.modules[-1][0] == cuda.source.text  # what runs is the generated source, unchanged
    a = sd.compile(target, prob, backend="numba", dtype=dtype, scheme=scheme).run(**run)
    n0 = len(fake.launches)
    b = cuda.run(**run)
    assert len(fake.launches) > n0, "the CUDA run launched no kernel"
    return a, b


def assert_same(a, b, rtol=1e-10):
    """Same snapshots, counts and statistics (means at rtol, variances at rtol of var + mean^2)."""
    assert (b.mode, b.name, b.paths, b.diverged) == (a.mode, a.name, a.paths, a.diverged)
    np.testing.assert_array_equal(b.steps, a.steps)
    np.testing.assert_allclose(b.t, a.t, rtol=1e-15)
    np.testing.assert_array_equal(b.count, a.count)
    assert set(b.mean) == set(a.mean) and set(b.var) == set(a.var)
    for k in a.mean:
        ma, va, mb, vb = a.mean[k], a.var[k], b.mean[k], b.var[k]
        assert ma.shape == mb.shape and va.shape == vb.shape, k
        for what, x, y in (("mean", mb, ma), ("var", vb, va)):  # overflow (inf, nan) at the same places
            np.testing.assert_array_equal(np.isfinite(x), np.isfinite(y), err_msg=f"{what}[{k}] finite")
        ok = np.isfinite(ma) & np.isfinite(va)
        ma, va, mb, vb = ma[ok], va[ok], mb[ok], vb[ok]
        if ma.size:
            scale = (np.abs(ma) + np.sqrt(va)).max()
            np.testing.assert_allclose(mb, ma, rtol=rtol, atol=rtol * 1e-3 * scale, err_msg=f"mean[{k}]")
            np.testing.assert_allclose(vb, va, rtol=rtol, atol=rtol * (va + ma**2).max(), err_msg=f"var[{k}]")


# -- problems ---------------------------------------------------------------------------------------------

DIAG = Quadratic(h=[0.5, 1.0, 3.0], sigma=[0.3, 1.0, 2.0], x0=[1.0, -2.0, 0.5])
DENSE = Quadratic(H=[[2.0, 0.8, 0.1], [0.8, 1.0, 0.2], [0.1, 0.2, 0.5]],
                  Sigma=[[1.0, 0.6, 0.0], [0.6, 0.5, 0.1], [0.0, 0.1, 0.3]], x0=[1.0, -1.0, 2.0])
STUDENT = Quadratic(h=[1.0, 4.0], sigma=[1.0, 0.5], noise="student-t", nu=3, x0=[1.0, -1.0])
LOGI = LogisticRegression.synthetic(n=40, d=4, B=5, seed=1)
_x0, _x1 = sp.symbols("x_0 x_1")
CUSTOM = Custom(_x0**4 / 4 + _x1**2 / 2 + _x0 * _x1 / 4, sigma=[0.5, 0.8], x0=[1.5, -1.0])

RUN = dict(paths=160, steps=60, eta=0.02, seed=2**33 + 5, save_every=6)


# -- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,run", [
    ("sgd", dict(RUN, substeps=2)),
    # rmsprop and adam SDEs start at t = tau (singular at 0); save_every=1 makes that a saved snapshot
    ("rmsprop", dict(RUN, save_every=1, steps=40)),
    ("adam", dict(RUN, save_every=7)),  # 60 steps: the last chunk ends between save points
])
def test_sde_euler_matches_numba(fake_cupy, name, run):
    a, b = _both(sd.derive(name), DIAG, fake_cupy, **run)
    assert_same(a, b)


@pytest.mark.parametrize("case", ["sde-diag", "sde-dense", "discrete-diag", "discrete-dense"])
def test_single_path_bit_for_bit(fake_cupy, case):
    """One path: mean = the state itself and var = 0 on both sides, so the two kernels can be compared bit
    for bit.  SGD, whose printed C and Python do the same operations in the same order (and no libm call
    but sqrt, which is correctly rounded everywhere); seeds with and without a high key word."""
    mode, kind = case.split("-")
    target = "sgd" if mode == "discrete" else sd.derive("sgd")
    for seed in (0, 2**40 + 3):
        a, b = _both(target, DENSE if kind == "dense" else DIAG, fake_cupy,
                     **dict(RUN, paths=1, seed=seed, save_every=1, substeps=1 if mode == "discrete" else 3))
        for k in a.mean:
            np.testing.assert_array_equal(b.mean[k], a.mean[k], err_msg=k)
            np.testing.assert_array_equal(b.var[k], a.var[k], err_msg=k)


def test_sde_weak2_matches_numba(fake_cupy):
    a, b = _both(sd.derive("rmsprop"), DIAG, fake_cupy, scheme="weak2", **RUN)
    assert_same(a, b)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_discrete_matches_numba(fake_cupy, name):
    a, b = _both(name, DIAG, fake_cupy, **(dict(RUN, hyper={"beta1": 0.8}) if name == "adam" else RUN))
    assert_same(a, b)


@pytest.mark.parametrize("mode", ["sde", "discrete"])
def test_dense_quadratic_correlated_noise(fake_cupy, mode):
    """Dense H and a full Sigma: the SDE's correlated increment L z, the discrete gradient H x + L z."""
    a, b = _both(sd.derive("sgd") if mode == "sde" else "sgd", DENSE, fake_cupy, **RUN)
    assert_same(a, b)


@pytest.mark.parametrize("mode", ["sde", "discrete"])
def test_student_t_noise(fake_cupy, mode):
    """The signSGD SDE derived under Student-t noise (its drift has the t CDF); discrete SGD, whose update
    is linear in the t variates (signSGD would only see their signs)."""
    target = sd.derive("signsgd", noise=sd.StudentT(nu=3)) if mode == "sde" else "sgd"
    a, b = _both(target, STUDENT, fake_cupy, **RUN)
    assert_same(a, b)


@pytest.mark.parametrize("case", ["discrete-sgd", "sde-sgd", "sde-signsgd-weak2"])
def test_logistic_regression(fake_cupy, case):
    """Minibatches drawn in the kernel (discrete); the SDE's low-rank correlated increment, which uses the
    per-example weights of the gradient at the current point (sgd); the noise scale recomputed at every
    support point of the weak order-2 scheme (signSGD: noise not linear, so per-coordinate)."""
    mode, name, *scheme = case.split("-")
    target = sd.derive(name) if mode == "sde" else name
    a, b = _both(target, LOGI, fake_cupy, scheme=scheme[0] if scheme else "euler", **dict(RUN, eta=0.1))
    assert_same(a, b)


def test_custom_objective(fake_cupy):
    a, b = _both(sd.derive("sgd"), CUSTOM, fake_cupy, **RUN)
    assert_same(a, b)


def test_variance_far_from_the_origin(fake_cupy):
    """|x|^2 near 1e16 with a variance of 4e13 to 1.5e14: from raw sums, s2 - n mu^2 cancels about 32
    digits (the rounding of n mu^2 alone is ~1e18 against M2 ~ 1e16) and the variance is lost; the CUDA
    path sums deviations from the previous snapshot's mean and agrees with numba's Welford."""
    far = Quadratic(h=[1e-8], sigma=[1.0], x0=[1e8])
    a, b = _both(sd.derive("sgd"), far, fake_cupy, paths=200, steps=40, eta=0.01, seed=3, save_every=10)
    va, vb = a.var["sqnorm"][1:], b.var["sqnorm"][1:]
    assert np.all(va > 1e13) and np.all(a.mean["sqnorm"] > 9e15)
    np.testing.assert_allclose(vb, va, rtol=1e-6)


def test_float32_state(fake_cupy):
    """float32 on both sides: the CUDA kernel computes in float, the numba kernel stores float32 states but
    computes in double, so they agree to single precision only (and differ from float64)."""
    a, b = _both(sd.derive("adam"), DIAG, fake_cupy, dtype="float32", **RUN)
    a64 = sd.compile(sd.derive("adam"), DIAG).run(**RUN)
    assert_same(a, b, rtol=2e-4)
    assert not all(np.array_equal(b.mean[k], a64.mean[k]) for k in a64.mean)


def test_divergence_reports_the_same_path_and_step(fake_cupy):
    """x^4 with strong noise: paths escape one by one (a step on x^4 is unstable beyond |x| ~ sqrt(2/eta))
    and overflow a few steps later, some within a substep."""
    prob = Custom(CUSTOM.f, sigma=[25.0, 1.0], x0=[1.0, 1.0])
    run = dict(paths=40, steps=150, eta=0.1, seed=11, save_every=1, substeps=2)
    errs = []
    for backend in ("numba", "cupy"):
        sim = sd.compile(sd.derive("sgd"), prob, backend=backend)
        with pytest.raises(sd.DivergenceError) as ei:
            # numba: one step per chunk, so it stops at the same step as the CUDA path (one save interval)
            sim.run(**run, chunk_seconds=1e-12, threads=1)
        errs.append(ei.value)
    a, b = errs
    assert (b.path, b.step, b.n_diverged) == (a.path, a.step, a.n_diverged)
    assert 1 < a.step < 150 and a.n_diverged < 40
    assert str(b) == str(a)
    assert_same(a.result, b.result)
    # masked: every path runs to the end, diverged ones leave the statistics
    a, b = _both(sd.derive("sgd"), prob, fake_cupy, **dict(run, save_every=5), mask_diverged=True)
    assert 0 < a.diverged < 40 and a.count[-1] == 40 - a.diverged
    assert_same(a, b)


def test_observables_reduced_in_several_slabs(fake_cupy, monkeypatch):
    """Many paths: the per-path observables are reduced slab by slab (a small slab here); the last block
    of threads of each slab must not write past the slab buffer."""
    nobs = 2 + 2 * DIAG.d  # rmsprop: loss, |x|^2, x, v
    monkeypatch.setattr(cuda_backend, "_OBS_SLAB", 200 * nobs)  # 200 paths per slab: 2 blocks of 128
    run = dict(RUN, paths=450, steps=12, save_every=4)
    a, b = _both(sd.derive("rmsprop"), DIAG, fake_cupy, **run)
    assert_same(a, b)
    obs = [(grid, args[-2]) for name, grid, args in fake_cupy.launches if name == "obs_kernel"]
    assert [(grid[0], int(p0)) for grid, p0 in obs[:3]] == [(2, 0), (2, 200), (1, 400)]


def test_kernel_arguments_are_checked_against_the_c_signature(fake_cupy):
    """The fake is strict: a scalar of the wrong width, a pointer of the wrong type and an out-of-bounds
    write are errors (on a GPU they would corrupt memory silently)."""
    mod = fake_cupy.RawModule(code='extern "C" __global__ void k(double *a, int n, long long m) {\n'
                                   "    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
                                   "    if (i < n + m) a[i] = 2.0 * i; }\n", options=("--std=c++17",))
    f = mod.get_function("k")
    a = fake_cupy.zeros(10)
    f((3,), (4,), (a, np.int32(10), np.int64(0)))
    np.testing.assert_array_equal(fake_cupy.asnumpy(a), 2.0 * np.arange(10))
    with pytest.raises(TypeError, match="int32"):
        f((3,), (4,), (a, np.int64(10), np.int64(0)))
    with pytest.raises(TypeError, match="int32"):
        f((3,), (4,), (a, 10, np.int64(0)))
    with pytest.raises(TypeError, match="float64"):
        f((3,), (4,), (fake_cupy.zeros(10, np.float32), np.int32(10), np.int64(0)))
    with pytest.raises(AssertionError, match="outside"):
        f((3,), (4,), (a, np.int32(10), np.int64(1)))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)


def test_a_wrong_kernel_is_caught(fake_cupy, monkeypatch):
    """The comparison can fail: the same kernel drawing its Gaussians from another Philox stream."""
    a = sd.compile(sd.derive("sgd"), DIAG).run(**RUN)
    real = cuda_backend.generate

    def wrong(*args, **kw):
        text = real(*args, **kw)
        assert "(sd_u32)p, 0u, key0" in text
        return text.replace("(sd_u32)p, 0u, key0", "(sd_u32)p, 2u, key0")

    monkeypatch.setattr(cuda_backend, "generate", wrong)
    b = sd.compile(sd.derive("sgd"), DIAG, backend="cupy").run(**RUN)
    with pytest.raises(AssertionError):
        assert_same(a, b)


def test_gpu_benchmark_script_runs(fake_cupy, capsys):
    """bench/bench_gpu.py end to end on the stand-in (tiny sizes): it measures both dtypes and the
    numba baseline, and its float64 GPU figure is the same simulation as numba's (same seed, paths)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.gpu_name() == "unknown CUDA device"
    assert bench.main(["--paths", "128", "--cpu-paths", "128", "--d", "4", "--steps", "20", "--save-every", "10"]) == 0
    out = capsys.readouterr().out
    assert "| cupy    | float32 |" in out and "| cupy    | float64 |" in out and "| numba   | float64 |" in out
    assert "coordinate-steps/s (target on an H100/H200: >= 1e11" in out
    assert bench.main(["--paths", "128", "--cpu-paths", "128", "--d", "4", "--steps", "20", "--save-every", "10",
                       "--only", "float32"]) == 0
    out = capsys.readouterr().out
    assert "| cupy    | float32 |" in out and "| cupy    | float64 |" not in out and "| numba   | float64 |" in out
    assert bench.main(["--vector", "s:usam,d:lamb", "--paths", "64", "--cpu-paths", "64", "--d", "4", "--steps",
                       "10", "--save-every", "5"]) == 0
    out = capsys.readouterr().out
    assert "| s:usam         | cupy    | float32 |" in out and "| d:lamb         | numba   | float64 |" in out
    gv = bench.measure("cupy", "float64", 64, 4, 10, 5, "d:lamb")
    cv = bench.measure("numba", "float64", 64, 4, 10, 5, "d:lamb")
    np.testing.assert_allclose(gv["loss"], cv["loss"], rtol=1e-10)  # the same simulation on both
    g = bench.measure("cupy", "float64", 128, 4, 20, 10)
    c = bench.measure("numba", "float64", 128, 4, 20, 10)
    assert g["coord_steps_per_s"] > 0 and g["run_s"] > 0
    np.testing.assert_allclose(g["loss"], c["loss"], rtol=1e-10)
