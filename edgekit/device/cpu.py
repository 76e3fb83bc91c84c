"""What this process's CPU can do, as the process itself sees it.

On x86 the flags come from the CPUID instruction, run from a few bytes of machine code: under emulation
(QEMU user mode, a VM with a masked CPU model) that is the CPU the runtimes' own dispatch sees, while
/proc/cpuinfo still shows the host's. On ARM Linux they come from the kernel's HWCAP words (getauxval),
which QEMU emulates too. /proc/cpuinfo is the fallback where neither can be read.

Standard library only: it is copied to devices beside runner.py.
"""
import ctypes
import mmap
import platform
import sys

X86_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_fp16", "amx_tile", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "asimdhp", "i8mm", "sve", "bf16")  # NEON, dotprod, fp16 arithmetic
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd41": "Cortex-A78", "0xd40": "Neoverse-V1", "0xd4f": "Neoverse-V2"}

# (leaf, subleaf, register index in eax/ebx/ecx/edx, bit) of each x86 feature.
_CPUID_BITS = {"avx2": (7, 0, 1, 5), "avx512f": (7, 0, 1, 16), "avx512bw": (7, 0, 1, 30),
               "avx512_vnni": (7, 0, 2, 11), "avx512_fp16": (7, 0, 3, 23), "amx_tile": (7, 0, 3, 24),
               "amx_int8": (7, 0, 3, 25), "avx_vnni": (7, 1, 0, 4)}
# AArch64 Linux: (AT_HWCAP or AT_HWCAP2, bit), from the kernel's uapi asm/hwcap.h.
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP_BITS = {"asimd": (_AT_HWCAP, 1), "asimdhp": (_AT_HWCAP, 10), "asimddp": (_AT_HWCAP, 20),
               "sve": (_AT_HWCAP, 22), "i8mm": (_AT_HWCAP2, 13), "bf16": (_AT_HWCAP2, 14)}
# void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4]) in the System V x86-64 calling convention:
# push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid; mov [r8], eax; mov [r8+4], ebx;
# mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("53 89f8 89f1 4989d0 0fa2 418900 41895804 41894808 4189500c 5b c3")


def cpu_info():
    """{machine, cpu_model, isa: {feature: bool}, isa_source: cpuid | hwcap | /proc/cpuinfo | None}."""
    machine = platform.machine().lower()
    fields = _proc_cpuinfo()
    x86 = machine in ("x86_64", "amd64")
    info = {"machine": platform.machine(), "cpu_model": None, "isa": {}, "isa_source": None}
    reader = _cpuid_reader() if x86 else None
    if reader is not None:
        top = reader(0)[0]  # the highest basic leaf this CPU answers
        info["isa"] = {name: top >= leaf and bool(reader(leaf, sub)[reg] >> bit & 1)
                       for name, (leaf, sub, reg, bit) in _CPUID_BITS.items()}
        info["cpu_model"], info["isa_source"] = _brand(reader), "cpuid"
    elif machine in ("aarch64", "arm64") and sys.platform.startswith("linux"):
        words = _hwcaps()
        if words is not None:
            info["isa"] = {name: bool(words[at] >> bit & 1) for name, (at, bit) in _HWCAP_BITS.items()}
            info["isa_source"] = "hwcap"
    if not info["isa"] and fields:
        flags = set((fields.get("flags") or fields.get("features") or "").split())
        info["isa"] = {name: name in flags for name in (X86_FEATURES if x86 else ARM_FEATURES)}
        info["isa_source"] = "/proc/cpuinfo"
    part = fields.get("cpu part")
    info["cpu_model"] = (info["cpu_model"] or fields.get("model name") or fields.get("hardware")
                         or (part and ARM_PARTS.get(part, f"ARM part {part}")) or platform.processor() or None)
    return info


def _proc_cpuinfo():
    """The first occurrence of each /proc/cpuinfo key (the first core describes the machine well enough)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def _cpuid_reader():
    """A function (leaf, subleaf) -> (eax, ebx, ecx, edx), or None where executable memory is refused
    (a hardened kernel) or the calling convention is not System V (Windows)."""
    if sys.platform == "win32":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    page.write(_CPUID_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4))(address)

    def read(leaf, subleaf=0):
        out = (ctypes.c_uint32 * 4)()
        function(leaf, subleaf, ctypes.byref(out))
        return tuple(out)

    read.page = page  # the code's memory lives as long as the function
    return read


def _brand(reader):
    """The processor brand string (leaves 0x80000002-4), e.g. 'AMD EPYC 7B13' or QEMU's model name."""
    if reader(0x80000000)[0] < 0x80000004:
        return None
    raw = b"".join(word.to_bytes(4, "little") for leaf in range(0x80000002, 0x80000005) for word in reader(leaf))
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip() or None


def _hwcaps():
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return {at: getauxval(at) for at in (_AT_HWCAP, _AT_HWCAP2)}
