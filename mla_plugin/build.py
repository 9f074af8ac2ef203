"""Building the CUDA kernels: JIT on first use, ahead of time with `python -m mla_plugin build`.

Builds land in a cache folder keyed by the sources' hash, the torch version and the arch list
(`$MLA_PLUGIN_CACHE_DIR`, default ~/.cache/mla_plugin/kernels). `$MLA_PLUGIN_NVCC_DEFINES`
(e.g. "MLA_MUTATE_P_DROP_BITS=1", space- or comma-separated NAME or NAME=VALUE) adds -D flags
to nvcc for tests of the kernel (scripts/mutation_check.sh); the defines are part of the
sources' hash, so such a build never matches, and never loads as, the real one. Each build folder carries a
manifest.json; at load time any build whose manifest matches the sources, the torch version and
the current GPU's arch is imported directly, so a prebuilt binary needs no nvcc.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mla_plugin import kernel_variants
from mla_plugin.geometry import SMEM_BUDGET_BYTES

EXTENSION_NAME = "mla_plugin_kernels"
SUPPORTED_ARCHS = ("9.0a", "12.0a", "12.1a")
# The translation units: the dispatch, one launch_<unit>.cu per UNIT of csrc/variants.def
# (kernel_variants.units()), and the mma.sync peak probe.
KERNEL_SOURCES = ("launch.cu", *(f"launch_{unit}.cu" for unit in kernel_variants.units()), "mma_peak.cu")
SOURCE_SUFFIXES = (".cu", ".cuh", ".h", ".cpp", ".def")
BINDING_SOURCE = "binding.cpp"
NVCC_FLAGS = ("-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo")
SMEM_LIMIT_BYTES = SMEM_BUDGET_BYTES  # the SM12x per-block budget, checked on every arch
_BUILD_FORMAT = 2  # bump when the build recipe changes in a way the sources don't show
DEFINES_ENV = "MLA_PLUGIN_NVCC_DEFINES"
_DEFINE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(=[A-Za-z0-9_.+-]*)?")

_loaded = None


def log(msg: str) -> None:
    print(f"[mla_plugin] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- paths
def csrc_dir() -> Path:
    """The kernel sources: inside the installed package, or the checkout's csrc/."""
    try:
        from mla_plugin import _paths  # provided by the package layout

        return Path(_paths.csrc_dir())
    except ImportError:
        return Path(__file__).resolve().parent.parent / "csrc"


def cache_root() -> Path:
    env = os.environ.get("MLA_PLUGIN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mla_plugin" / "kernels"


def search_roots() -> list[Path]:
    """Where prebuilt kernels are looked for: $MLA_PLUGIN_PREBUILT_DIR (e.g. baked into an
    image), then the cache."""
    roots = []
    env = os.environ.get("MLA_PLUGIN_PREBUILT_DIR")
    if env:
        roots.append(Path(env))
    roots.append(cache_root())
    return roots


def cuda_home() -> str | None:
    """The CUDA toolkit root (where include/cuda.h lives). nvcc on PATH may be a copy outside
    the toolkit, which makes torch guess wrong, so look at the usual roots too."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates += ["/usr/local/cuda"] + sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))
    for c in candidates:
        if c and (Path(c) / "include" / "cuda.h").is_file():
            return c
    return None


# ---------------------------------------------------------------------------------- archs
def parse_archs(text: str) -> list[str]:
    """'12.0a,12.1a' or 'sm_120a' -> ['12.0a', '12.1a'], each one we support."""
    archs = []
    for item in [s.strip() for s in text.split(",") if s.strip()]:
        m = re.fullmatch(r"(?:sm_)?(\d+)\.?(\d)a?", item)
        if not m:
            raise ValueError(f"--arch: cannot read {item!r}; expected e.g. 12.0a, 12.1a or 9.0a")
        arch = f"{int(m.group(1))}.{m.group(2)}a"
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"--arch: {item!r} is not supported; expected one of {', '.join(SUPPORTED_ARCHS)}")
        if arch not in archs:
            archs.append(arch)
    if not archs:
        raise ValueError(f"--arch: empty; expected one or more of {', '.join(SUPPORTED_ARCHS)}")
    return archs


def arch_of_device(device=None) -> str:
    import torch

    try:
        major, minor = torch.cuda.get_device_capability(device)
    except (RuntimeError, AssertionError) as exc:  # no driver, no GPU, CPU-only torch
        raise RuntimeError(f"mla_plugin: no CUDA GPU to take the kernel arch from ({exc})") from exc
    return f"{major}.{minor}a"


def gencode_flags(archs: list[str]) -> list[str]:
    # Explicit -gencode: with nvcc 13, -arch=sm_90a also runs a plain compute_90 pass.
    flags = []
    for a in archs:
        num = a.replace(".", "").rstrip("a")
        flags.append(f"-gencode=arch=compute_{num}a,code=sm_{num}a")
    return flags


def arch_tag(archs: list[str]) -> str:
    return ",".join(a.replace(".", "") for a in archs)  # '90a,120a'


# ---------------------------------------------------------------------------------- keys
def nvcc_defines() -> list[str]:
    """-D flags from $MLA_PLUGIN_NVCC_DEFINES ("NAME=VALUE NAME2", commas or spaces between)."""
    text = os.environ.get(DEFINES_ENV, "")
    flags = []
    for item in text.replace(",", " ").split():
        if not _DEFINE.fullmatch(item):
            raise ValueError(f"{DEFINES_ENV}: cannot read {item!r}; expected NAME or NAME=VALUE "
                             "(letters, digits, _ . + -), e.g. MLA_MUTATE_P_DROP_BITS=1")
        flags.append(f"-D{item}")
    return flags


def nvcc_flags() -> list[str]:
    """Every nvcc flag but the archs: NVCC_FLAGS plus $MLA_PLUGIN_NVCC_DEFINES."""
    return list(NVCC_FLAGS) + nvcc_defines()


def source_files(root: Path | None = None) -> list[Path]:
    """Every file the kernel build reads: csrc/ and its subfolders (decode/ ...), sorted."""
    root = root or csrc_dir()
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)


def source_hash(root: Path | None = None) -> str:
    """The cache key of the sources: flags, $MLA_PLUGIN_NVCC_DEFINES, every source file's
    path below csrc/ and bytes."""
    root = root or csrc_dir()
    h = hashlib.sha256(f"format{_BUILD_FORMAT}".encode())
    h.update(" ".join(NVCC_FLAGS).encode())
    defines = nvcc_defines()
    if defines:  # none: the same hash as without the variable
        h.update((" defines " + " ".join(defines)).encode())
    for path in source_files(root):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class BuildKey:
    sources: str
    torch: str
    archs: tuple[str, ...]

    @property
    def folder_name(self) -> str:
        archs = "-".join(a.replace(".", "") for a in self.archs)
        return f"{self.sources}-torch{self.torch}-sm{archs}"

    def manifest(self) -> dict:
        manifest = {"sources": self.sources, "torch": self.torch, "archs": list(self.archs),
                    "extension": EXTENSION_NAME}
        defines = nvcc_defines()
        if defines:  # for people reading the folder: the hash already tells builds apart
            manifest["nvcc_defines"] = defines
        return manifest


def current_key(archs: list[str]) -> BuildKey:
    import torch

    return BuildKey(source_hash(), torch.__version__.split("+")[0], tuple(archs))


def _library_in(folder: Path) -> Path | None:
    libs = sorted(folder.glob(f"{EXTENSION_NAME}*.so"))
    return libs[0] if libs else None


def _manifests(root: Path) -> list[Path]:
    """Build manifests in a search root: the root itself is a build folder when it was
    `build --out ROOT`; the cache holds one build folder per key below it."""
    if not root.is_dir():
        return []
    own = root / "manifest.json"
    return ([own] if own.is_file() else []) + sorted(root.glob("*/manifest.json"))


def _read_manifests():
    """(build folder, manifest dict) for every readable manifest under the search roots."""
    for root in search_roots():
        for manifest in _manifests(root):
            try:
                yield manifest.parent, json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue


def find_prebuilt(arch: str) -> Path | None:
    """A build folder whose manifest matches these sources and torch and contains `arch`."""
    key = current_key([arch])
    for folder, m in _read_manifests():
        if (m.get("sources") == key.sources and m.get("torch") == key.torch
                and arch in m.get("archs", []) and _library_in(folder)):
            return folder
    return None


def list_builds() -> list[dict]:
    """Every build folder found (for `doctor`), with whether it matches these sources/torch."""
    import torch

    sources, torch_version = source_hash(), torch.__version__.split("+")[0]
    return [{**m, "path": str(folder),
             "current": m.get("sources") == sources and m.get("torch") == torch_version}
            for folder, m in _read_manifests()]


# ---------------------------------------------------------------------------------- build
def build(archs: list[str], out_dir: Path | None = None, verbose: bool = True) -> Path:
    """Compile the extension for `archs` into out_dir (default: its cache folder)."""
    home = cuda_home()
    if home is None:
        raise RuntimeError("mla_plugin: no CUDA toolkit found (looked for include/cuda.h under "
                           "$CUDA_HOME, nvcc's folder and /usr/local/cuda*); install one or set CUDA_HOME")
    os.environ["CUDA_HOME"] = home
    import torch.utils.cpp_extension as cpp_ext

    cpp_ext.CUDA_HOME = home  # computed at import from PATH; may have guessed wrong
    key = current_key(archs)
    folder = Path(out_dir) if out_dir else cache_root() / key.folder_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mla_build_info.h").write_text(
        f'#pragma once\n#define MLA_BUILT_ARCHS "{arch_tag(archs)}"\n')
    src = csrc_dir()
    sources = [str(src / BINDING_SOURCE)] + [str(src / s) for s in KERNEL_SOURCES]
    defines = nvcc_defines()
    log(f"building CUDA kernels for sm_{arch_tag(archs)} from {len(sources)} sources in {src} "
        f"into {folder} (once; 1-3 minutes)" + (f" with {' '.join(defines)}" if defines else ""))
    start = time.time()
    cpp_ext.load(
        name=EXTENSION_NAME,
        sources=sources,
        extra_cflags=["-O3"],  # torch picks the C++ standard its headers need
        extra_cuda_cflags=nvcc_flags() + gencode_flags(archs),
        extra_include_paths=[str(src), str(folder)],
        build_directory=str(folder),
        verbose=verbose,
        is_python_module=True,
    )
    (folder / "manifest.json").write_text(json.dumps(key.manifest(), indent=2) + "\n")
    log(f"built sm_{arch_tag(archs)} in {time.time() - start:.0f} s: {folder}")
    return folder


def _import_library(path: Path):
    spec = importlib.util.spec_from_file_location(EXTENSION_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_extension(archs: list[str] | None = None, verbose: bool = True):
    """The compiled kernels for the current GPU: a matching prebuilt/cached build if one
    exists, else a JIT build (needs nvcc). Loaded once per process."""
    global _loaded
    if _loaded is not None:
        return _loaded
    import torch  # the extension links against it

    if archs is None and not torch.cuda.is_available():
        raise RuntimeError("mla_plugin: CUDA is not available (torch.cuda.is_available() is False); "
                           "the decode kernel needs an SM12x GPU (or a Hopper GPU for testing)")
    arch = arch_of_device() if archs is None else archs[0]
    if arch not in SUPPORTED_ARCHS:
        name = torch.cuda.get_device_name()
        raise RuntimeError(
            f"mla_plugin: GPU {name} has compute capability {arch[:-1]}; the kernel is built for "
            f"{', '.join(SUPPORTED_ARCHS)} (SM12x, and Hopper for testing)")
    folder = find_prebuilt(arch)
    if folder is None:
        folder = build(archs or [arch], verbose=verbose)
    _loaded = _import_library(_library_in(folder))
    return _loaded


# ---------------------------------------------------------------------------------- ptxas
@dataclass
class KernelResources:
    arch: str
    kernel: str
    registers: int
    smem_bytes: int  # static shared memory reported by ptxas
    stack_bytes: int
    spill_stores: int
    spill_loads: int


_PTXAS_FUNC = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(text: str) -> list[KernelResources]:
    """ptxas -v output -> one record per kernel."""
    out, current = [], None
    for line in text.splitlines():
        if m := _PTXAS_FUNC.search(line):
            current = {"kernel": m.group(1), "arch": m.group(2), "stack": 0, "ss": 0, "sl": 0}
        elif current and (m := _PTXAS_STACK.search(line)):
            current.update(stack=int(m.group(1)), ss=int(m.group(2)), sl=int(m.group(3)))
        elif current and (m := _PTXAS_USED.search(line)):
            out.append(KernelResources(current["arch"], current["kernel"], int(m.group(1)),
                                       int(m.group(2) or 0), current["stack"], current["ss"], current["sl"]))
            current = None
    return out


def ptxas_report(arch: str, sources: tuple[str, ...] = KERNEL_SOURCES, jobs: int | None = None) -> list[KernelResources]:
    """Compile the kernel sources (no torch needed) for one arch with ptxas -v."""
    from concurrent.futures import ThreadPoolExecutor

    home = cuda_home()
    nvcc = str(Path(home) / "bin" / "nvcc") if home and (Path(home) / "bin" / "nvcc").exists() else shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("mla_plugin: nvcc not found; install the CUDA toolkit or set CUDA_HOME")
    src = csrc_dir()

    def one(name: str) -> str:
        cmd = [nvcc, *nvcc_flags(), *gencode_flags([arch]), "-Xptxas", "-v", "-c", str(src / name),
               "-o", os.devnull]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"nvcc failed on {name} for {arch}:\n{res.stderr[-4000:]}")
        return res.stderr

    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        texts = list(pool.map(one, sources))
    return [r for t in texts for r in parse_ptxas(t)]


def find_cuobjdump() -> str | None:
    """cuobjdump from PATH, the CUDA toolkit, or the nvidia-cuda-cuobjdump wheel (with nvdisasm)."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    home = cuda_home()
    candidates = [Path(home) / "bin" / "cuobjdump"] if home else []
    try:
        import nvidia

        candidates += [Path(p) / "cu13" / "bin" / "cuobjdump" for p in nvidia.__path__]
    except ImportError:
        pass
    for c in candidates:
        if c.is_file():
            return str(c)
    return None


def sass_by_kernel(arch: str, source: str) -> dict[str, str]:
    """Compile one kernel source for `arch` and disassemble it: {mangled kernel name: SASS}."""
    import tempfile

    tool = find_cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found: install the CUDA toolkit or `pip install "
                           "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm` (the test extra does)")
    home = cuda_home()
    nvcc = str(Path(home) / "bin" / "nvcc") if home else shutil.which("nvcc")
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "k.o"
        subprocess.run([nvcc, *nvcc_flags(), *gencode_flags([arch]), "-c", str(csrc_dir() / source), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        env = dict(os.environ)
        env["PATH"] = str(Path(tool).parent) + os.pathsep + env.get("PATH", "")  # nvdisasm beside it
        text = subprocess.run([tool, "--dump-sass", str(obj)], check=True, capture_output=True, text=True,
                              env=env).stdout
    kernels, name = {}, None
    for line in text.splitlines():
        if m := re.search(r"Function : (\S+)", line):
            name = m.group(1)
            kernels[name] = ""
        elif name:
            kernels[name] += line + "\n"
    return kernels


def resource_problems(records: list[KernelResources]) -> list[str]:
    """Every spill, stack frame or static shared memory over the SM12x budget, as text."""
    problems = []
    for r in records:
        if r.spill_stores or r.spill_loads:
            problems.append(f"{r.arch} {r.kernel}: spills ({r.spill_stores} B stores, {r.spill_loads} B loads)")
        if r.stack_bytes:
            problems.append(f"{r.arch} {r.kernel}: {r.stack_bytes} B stack frame")
        if r.smem_bytes > SMEM_LIMIT_BYTES:
            problems.append(f"{r.arch} {r.kernel}: {r.smem_bytes} B static shared memory")
    return problems


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default=None,
                        help="comma-separated archs, e.g. 12.0a,12.1a (default: the current GPU's)")
    parser.add_argument("--out", default=None,
                        help="folder to build into (default: the cache); point MLA_PLUGIN_PREBUILT_DIR at it to use it")
    parser.add_argument("--ptxas-check", action="store_true",
                        help="only compile the kernels with ptxas -v and fail on spills, stack frames "
                             "or shared memory over the SM12x budget (no torch build, no GPU)")
    parser.add_argument("--quiet", action="store_true", help="less compiler output")


def main(args) -> int:
    try:
        if args.arch:
            archs = parse_archs(args.arch)
        elif args.ptxas_check:
            archs = list(SUPPORTED_ARCHS)
        else:
            archs = [arch_of_device()]
    except ValueError as exc:
        log(f"error: {exc}")
        return 2
    except RuntimeError as exc:  # arch_of_device: no GPU
        log(f"error: {exc}; to build without a GPU, pass --arch (e.g. --arch 12.0a,12.1a)")
        return 2
    if args.ptxas_check:
        failures = 0
        for i, arch in enumerate(archs, 1):
            log(f"ptxas check {i}/{len(archs)}: sm_{arch.replace('.', '')}")
            records = ptxas_report(arch)
            for r in records:
                print(f"{r.arch:8s} regs {r.registers:3d} stack {r.stack_bytes:4d} spills {r.spill_stores}/{r.spill_loads}  {r.kernel[:110]}")
            problems = resource_problems(records)
            for p in problems:
                log(f"FAIL {p}")
            failures += len(problems)
        return 1 if failures else 0
    folder = build(archs, Path(args.out) if args.out else None, verbose=not args.quiet)
    print(folder)
    return 0
