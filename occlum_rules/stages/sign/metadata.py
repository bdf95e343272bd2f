"""The metadata blob sgx_sign writes into ``.note.sgxmeta``, and its SGX1-compatible copy.

metadata_t is a header (magic, version, sizes, attributes), the SIGSTRUCT, a few data
directories, then bump-allocated data: TCS template, global-data template, a zero buffer,
the patch table and the layout table. The global-data template is patched over
``g_global_data`` before measuring, so its bytes (including metadata offsets it copies from
the layout table) are part of MRENCLAVE.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from occlum_rules.stages.sign import layout as L
from occlum_rules.stages.sign.elf_checks import PAGE, EnclaveElf
from occlum_rules.stages.sign.enclave_xml import EnclaveConfig
from occlum_rules.stages.sign.errors import SignError
from occlum_rules.stages.sign.profiles import MASK64, SdkProfile
from occlum_rules.stages.sign.sigstruct import CSS_SIZE, Attributes, css_attributes, misc_fields

MAGIC = 0x86A80294635D0E4C
HEADER_FMT = "<QQIIIIIIQQQ"  # magic .. attributes (64 bytes)
OFF_CSS = 64
TD_TEMPLATE_OFF = 80
TCS_IN_GD_OFF = 272
LAYOUT_NUM_OFF = 344
LAYOUT_TABLE_OFF = 352
GD_LAYOUT_CAPACITY = 43
DIR_PATCH, DIR_LAYOUT = 0, 1


def make_version(major: int, minor: int) -> int:
    return (major << 32) | minor


@dataclass
class MetadataPlan:
    """Everything sgx_sign decides before it measures: the blob minus SIGSTRUCT's hash/key."""

    profile: SdkProfile
    config: EnclaveConfig
    attributes: Attributes
    meta_versions: int
    info: str
    layout: L.Layout
    blob: bytearray  # metadata_t up to its ``size`` (SIGSTRUCT area zero)
    patches: list[tuple[int, int, int]]  # (file offset, metadata offset, size)

    @property
    def size(self) -> int:
        return len(self.blob)

    def patched_image(self, data: bytes) -> bytes:
        """The enclave file as the loader sees it after applying the patch table."""
        image = bytearray(data)
        for dst, src, size in self.patches:
            image[dst : dst + size] = self.blob[src : src + size]
        return bytes(image)


def _tcs_template(c: EnclaveConfig, elf: EnclaveElf, lay: L.Layout, attrs: Attributes) -> bytes:
    tcs, ssa, td = lay.entry(L.TCS), lay.entry(L.SSA), lay.entry(L.TD)
    oentry = elf.symbols.get("enclave_entry", 0)
    if oentry == 0:
        raise SignError("The input enclave file is not correct.", "Could not build TCS template")
    fs_base = (td.rva - tcs.rva + (td.page_count - 1) * PAGE) & MASK64
    flags = 2 if attrs.flags & 0x400 else 0
    return struct.pack("<QQQIIQQQQII", 0, flags, (ssa.rva - tcs.rva) & MASK64, 0, L.SSA_NUM,
                       oentry, 0, fs_base, fs_base, 0xFFFFFFFF, 0xFFFFFFFF)


def _gd_template(c: EnclaveConfig, elf: EnclaveElf, lay: L.Layout, attrs: Attributes,
                 profile: SdkProfile, tcs_template: bytes, layout_table: bytes, n_items: int) -> bytes:
    gd = bytearray(profile.gd_size)
    tcs, ssa, td = lay.entry(L.TCS), lay.entry(L.SSA), lay.entry(L.TD)
    stack_min, heap, rsrv = lay.entry(L.STACK_MIN), lay.entry(L.HEAP_MIN), lay.first(L.RSRV_MIN)
    rsrv_fields = (rsrv.rva, c.rsrv_init, c.rsrv_executable) if rsrv else (0, 0, 0)
    struct.pack_into("<QQQQQQQQQQ", gd, 0, 0, lay.enclave_size, heap.rva, c.heap_init,
                     *rsrv_fields, c["TCSPolicy"], c.tcs_max_num, c["TCSNum"])
    stack_base = (stack_min.rva + c["StackMinSize"] - tcs.rva) & MASK64
    stack_limit = (stack_base - c["StackMaxSize"]) & MASK64
    ssa_base = (ssa.rva - tcs.rva) & MASK64
    td_rel = (td.rva - tcs.rva) & MASK64
    td_addr = (td_rel + (td.page_count - 1) * PAGE) & MASK64
    tls_addr = (td_addr - elf.tls_vsize) & MASK64 if elf.tls_vsize is not None else td_rel
    td_fields = {
        0: td_addr,  # self_addr
        8: stack_base,  # last_sp
        16: stack_base,
        24: stack_limit,
        32: (ssa_base + attrs.ssa_frame_size * PAGE - 184) & MASK64,  # first_ssa_gpr
        56: attrs.xsave_size,
        88: ssa_base,  # first_ssa_xsave
        104: tls_addr,
        112: (td_addr + 104) & MASK64,  # tls_array = &tls_addr
    }
    for off, value in td_fields.items():
        struct.pack_into("<Q", gd, TD_TEMPLATE_OFF + off, value)
    gd[TCS_IN_GD_OFF : TCS_IN_GD_OFF + len(tcs_template)] = tcs_template
    struct.pack_into("<I", gd, LAYOUT_NUM_OFF, n_items)
    gd[LAYOUT_TABLE_OFF : LAYOUT_TABLE_OFF + len(layout_table)] = layout_table
    elrange_size = lay.enclave_size if profile.gd_elrange_size_is_enclave_size else 0
    struct.pack_into("<QQQQ", gd, 1728, 0, 0, elrange_size, lay.edmm_bk_overhead)
    return bytes(gd)


def plan_metadata(c: EnclaveConfig, elf: EnclaveElf, profile: SdkProfile) -> MetadataPlan:
    attrs = css_attributes(c, profile)
    css_select, desired = misc_fields(c, profile)
    meta_versions, info = L.metadata_versions(c, css_select, profile.shared_dynamic_info)

    tcs_off = profile.data_offset
    gd_off = tcs_off + L.TCS_TEMPLATE_SIZE
    zero_off = gd_off + profile.gd_size
    patch_off = zero_off + 8
    layout_off = patch_off + 4 * 32

    lay = L.build_layout(c, elf, attrs.ssa_frame_size, meta_versions, tcs_off, GD_LAYOUT_CAPACITY)
    table = b"".join(item.pack() for item in lay.items)
    size = layout_off + len(table)
    if size > profile.metadata_size:
        raise SignError("The input enclave file is not correct.", "Layout table could not be allocated")

    gd_dst = elf.global_data_offset(profile.gd_size)
    patches = [(gd_dst, gd_off, profile.gd_size), (0x3C, zero_off, 2), (0x28, zero_off, 8),
               (0x3E, zero_off, 2)]
    tcs = _tcs_template(c, elf, lay, attrs)
    gd = _gd_template(c, elf, lay, attrs, profile, tcs, table, len(lay.items))

    blob = bytearray(size)
    version = make_version(*profile.sgx2_version)
    struct.pack_into(HEADER_FMT, blob, 0, MAGIC, version, size, c["TCSPolicy"],
                     attrs.ssa_frame_size, attrs.xsave_size, desired, c["TCSMinPool"],
                     lay.enclave_size, attrs.flags, attrs.metadata_xfrm)
    dirs = [(patch_off, 4 * 32), (layout_off, len(table))] + [(0, 0)] * (profile.dir_count - 2)
    for i, (off, length) in enumerate(dirs):
        struct.pack_into("<II", blob, OFF_CSS + CSS_SIZE + 8 * i, off, length)
    blob[tcs_off : tcs_off + len(tcs)] = tcs
    blob[gd_off : gd_off + len(gd)] = gd
    for i, (dst, src, length) in enumerate(patches):
        struct.pack_into("<QII16x", blob, patch_off + 32 * i, dst, src, length)
    blob[layout_off:size] = table
    return MetadataPlan(profile, c, attrs, meta_versions, info, lay, blob, patches)


def _dir(blob: bytes | bytearray, index: int) -> tuple[int, int]:
    return struct.unpack_from("<II", blob, OFF_CSS + CSS_SIZE + 8 * index)


def _items(blob: bytes | bytearray) -> list[L.Item]:
    off, length = _dir(blob, DIR_LAYOUT)
    return [L.unpack_item(bytes(blob[p : p + 32])) for p in range(off, off + length, 32)]


def compatible_blob(plan: MetadataPlan, main: bytes) -> bytes:
    """The SGX1 (v1.x) copy of the signed main blob: same bytes, a simplified layout table.

    Only the layout table changes; the templates and patch table stay byte copies, still
    describing the full layout (as the real tool leaves them).
    """
    items = _items(main)
    layout_off, _ = _dir(main, DIR_LAYOUT)
    ut_start = next(i for i, it in enumerate(items) if isinstance(it, L.Entry) and it.id == L.GUARD)
    ut_end = next(i for i, it in enumerate(items) if isinstance(it, L.Entry) and it.id == L.TD)
    rsrv = {it.id: i for i, it in enumerate(items)
            if isinstance(it, L.Entry) and it.id in (L.RSRV_MIN, L.RSRV_INIT, L.RSRV_MAX)}

    def without_post_add(item: L.Item, si: int | None = None) -> L.Entry:
        it = L.as_entry(item)
        return replace(it, attributes=it.attributes & ~L.POST_ADD,
                       si_flags=it.si_flags if si is None else si)

    new = [replace(it) for it in items]
    after = ut_end + 1
    if after == len(items):
        pass
    elif after == rsrv.get(L.RSRV_MIN):
        if L.RSRV_INIT in rsrv:
            new[rsrv[L.RSRV_INIT]] = without_post_add(new[rsrv[L.RSRV_INIT]])
        if L.RSRV_MAX in rsrv:
            new[rsrv[L.RSRV_MAX]] = without_post_add(new[rsrv[L.RSRV_MAX]], si=0)
    else:
        count = after - ut_start
        step = L.span_bytes(items[ut_start:after])
        group = L.Group(L.THREAD_GROUP, count, plan.config["TCSNum"] - 1, step)
        tail = [new[rsrv[i]] for i in (L.RSRV_MIN, L.RSRV_INIT, L.RSRV_MAX) if i in rsrv]
        new = new[:after] + [group]
        if tail:
            new.append(tail[0])
            for extra in tail[1:]:
                si = 0 if extra.id == L.RSRV_MAX else None
                new.append(without_post_add(extra, si))
    # metadata_cleanup: HEAP_MAX leaves the measurement, dynamic ranges are not created
    seen: set[int] = set()
    for i, it in enumerate(new):
        if isinstance(it, L.Group) or it.id in seen:
            continue
        if it.id == L.HEAP_MAX:
            new[i] = without_post_add(it, si=0)
        elif it.id in (L.HEAP_INIT, L.STACK_MAX):
            new[i] = without_post_add(it)
        else:
            continue
        seen.add(it.id)

    table = b"".join(it.pack() for it in new)
    blob = bytearray(main[:layout_off]) + table
    version = make_version(*plan.profile.sgx1_version)
    struct.pack_into("<QI", blob, 8, version, len(blob))
    struct.pack_into("<II", blob, OFF_CSS + CSS_SIZE + 8 * DIR_LAYOUT, layout_off, len(table))
    return bytes(blob)


def final_metadata(plan: MetadataPlan, css: bytes) -> tuple[bytes, str | None]:
    """The METADATA_SIZE bytes written into the file, and sgx_sign's compat message."""
    patched = bytearray(plan.blob)
    patched[OFF_CSS : OFF_CSS + CSS_SIZE] = css
    main = bytes(patched)
    area = bytearray(plan.profile.metadata_size)
    versions = plan.meta_versions
    if versions == 2 and not plan.profile.compat_blob_for_sgx2_only:
        area[: len(main)] = main
        return bytes(area), "generate_compatible_metadata: Only requires SGX2 metadata"
    compat = compatible_blob(plan, main)
    version = make_version(*plan.profile.sgx1_version)
    if versions == 1:
        area[: len(compat)] = compat
        return bytes(area), f"handle_compatible_metadata: Overwrite with metadata version {version:#x}"
    if len(main) + len(compat) > len(area):
        raise SignError("Error happened while signing the enclave.", "(metadata does not fit)")
    area[: len(main)] = main
    area[len(main) : len(main) + len(compat)] = compat
    return bytes(area), f"handle_compatible_metadata: Append metadata version {version:#x}"


# ---------------------------------------------------------------------------------------
# Reading signed enclaves


@dataclass(frozen=True)
class MetadataBlob:
    raw: bytes

    def field(self, fmt: str, off: int) -> int:
        return struct.unpack_from(fmt, self.raw, off)[0]

    @property
    def version(self) -> int:
        return self.field("<Q", 8)

    @property
    def size(self) -> int:
        return self.field("<I", 16)

    @property
    def css(self) -> bytes:
        return self.raw[OFF_CSS : OFF_CSS + CSS_SIZE]


def read_metadata_area(area: bytes) -> list[MetadataBlob]:
    """Every metadata blob in a signed enclave's .note.sgxmeta (main first, then compat)."""
    blobs: list[MetadataBlob] = []
    pos = 0
    while pos + 64 <= len(area):
        magic, _, size = struct.unpack_from("<QQI", area, pos)
        if magic != MAGIC:
            break
        if size < OFF_CSS + CSS_SIZE or pos + size > len(area):
            raise SignError("the enclave's metadata is corrupt (bad blob size)")
        blobs.append(MetadataBlob(bytes(area[pos : pos + size])))
        pos += size
    return blobs
