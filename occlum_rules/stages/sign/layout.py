"""The enclave memory layout table, built the way sgx_sign builds it.

After the ELF image come the heap, the utility thread, the static/EREMOVE/dynamic thread
contexts, the reserved memory and (for SGX2 metadata) the user region, then a trailing
guard up to the next power of two. The table is written into the metadata, copied into
the measured global data, and drives the measurement, so order and every field matter.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

from occlum_rules.stages.sign.elf_checks import EnclaveElf, round_up
from occlum_rules.stages.sign.enclave_xml import EnclaveConfig
from occlum_rules.stages.sign.errors import SignError

PAGE = 0x1000

# Layout ids
HEAP_MIN, HEAP_INIT, HEAP_MAX, TCS, TD, SSA, STACK_MAX, STACK_MIN = 1, 2, 3, 4, 5, 6, 7, 8
THREAD_GROUP, GUARD = 0x1009, 10
DYN_OFFSET = 10  # dynamic thread entries: id + 10
THREAD_GROUP_DYN = 0x1013
RSRV_MIN, RSRV_INIT, RSRV_MAX, USER_REGION = 20, 21, 22, 23
GROUP_FLAG = 0x1000

# Page attributes
EADD, EEXTEND, EREMOVE, POST_ADD, POST_REMOVE, DYN_THREAD, GROW_DOWN = 1, 2, 4, 8, 0x10, 0x20, 0x40

# SECINFO flags
SI_RW, SI_RWX, SI_TCS = 0x203, 0x207, 0x100

GUARD_PAGES = 0x10000 // PAGE
SSA_NUM = 2
TCS_TEMPLATE_SIZE = 72
STACK_FILL = 0xCCCCCCCC


@dataclass
class Entry:
    """layout_entry_t: a run of pages with one id, attributes and SECINFO flags."""

    id: int
    page_count: int
    attributes: int = 0
    si_flags: int = 0
    content_size: int = 0
    content_offset: int = 0
    rva: int = 0

    is_group = False

    def pack(self) -> bytes:
        return struct.pack("<HHIQIIQ", self.id, self.attributes, self.page_count, self.rva,
                           self.content_size, self.content_offset, self.si_flags)


@dataclass
class Group:
    """layout_group_t: repeat the previous ``entry_count`` entries ``load_times`` times."""

    id: int
    entry_count: int
    load_times: int
    load_step: int = 0

    is_group = True

    def pack(self) -> bytes:
        return struct.pack("<HHIQ16x", self.id, self.entry_count, self.load_times, self.load_step)


Item = Entry | Group


def span_bytes(items: Sequence[Item]) -> int:
    """Bytes a run of entries covers: the step between repeats of a group."""
    return sum(it.page_count * PAGE for it in items if isinstance(it, Entry))


def as_entry(item: Item) -> Entry:
    if isinstance(item, Group):
        raise SignError("Error happened while signing the enclave.", f"(layout item {item.id:#x} is a group)")
    return item


def unpack_item(raw: bytes) -> Item:
    (item_id,) = struct.unpack_from("<H", raw)
    if item_id & GROUP_FLAG:
        _, count, times, step = struct.unpack_from("<HHIQ", raw)
        return Group(item_id, count, times, step)
    _, attrs, pages, rva, csize, coff, si = struct.unpack_from("<HHIQIIQ", raw)
    return Entry(item_id, pages, attrs, si, csize, coff, rva)


def guard() -> Entry:
    return Entry(GUARD, GUARD_PAGES)


@dataclass
class Layout:
    items: list[Item]
    enclave_size: int
    edmm_bk_overhead: int

    def first(self, entry_id: int) -> Entry | None:
        return next((i for i in self.items if isinstance(i, Entry) and i.id == entry_id), None)

    def entry(self, entry_id: int) -> Entry:
        """An entry every layout has (TCS, SSA, TD, stack, heap)."""
        found = self.first(entry_id)
        if found is None:
            raise SignError("Error happened while signing the enclave.", f"(no layout entry {entry_id})")
        return found


def td_pages(elf: EnclaveElf) -> int:
    return 1 + (round_up(elf.tls_vsize, PAGE) // PAGE if elf.tls_vsize is not None else 0)


def thread_template(c: EnclaveConfig, elf: EnclaveElf, ssa_frame_size: int, tcs_offset: int) -> list[Entry]:
    """guard | [stack max] | stack min | guard | TCS | SSA | guard | TD."""
    items = [guard()]
    stack_min, stack_max = c["StackMinSize"], c["StackMaxSize"]
    if stack_max > stack_min:
        items.append(Entry(STACK_MAX, (stack_max - stack_min) // PAGE, EADD | EEXTEND | GROW_DOWN,
                           SI_RW, STACK_FILL))
    items.append(Entry(STACK_MIN, stack_min // PAGE, EADD | EEXTEND, SI_RW, STACK_FILL))
    items.append(guard())
    items.append(Entry(TCS, 1, EADD | EEXTEND, SI_TCS, TCS_TEMPLATE_SIZE, tcs_offset))
    items.append(Entry(SSA, ssa_frame_size * SSA_NUM, EADD | EEXTEND, SI_RW))
    items.append(guard())
    items.append(Entry(TD, td_pages(elf), EADD | EEXTEND, SI_RW))
    return items


def _ema_block(size: int) -> int:
    """emalloc block size of an allocation (header 8, alignment 8, minimum 16)."""
    return max(16, round_up(size + 8, 8))


EMA = _ema_block(72)  # sizeof(ema_t)
BIT_ARRAY = _ema_block(24)  # sizeof(bit_array)


def _node(pages: int) -> int:
    return EMA + BIT_ARRAY + _ema_block(round_up(pages, 8) >> 3)


def rts_bookkeeping_overhead(c: EnclaveConfig, elf: EnclaveElf, ssa_frame_size: int) -> int:
    """Bytes the SGX2 runtime's EMA bookkeeping needs (sgx_sign's estimate, quirks included)."""
    heap = _node(c["HeapMinSize"] // PAGE)
    if c.heap_init > c["HeapMinSize"]:
        heap += _node((c.heap_init - c["HeapMinSize"]) // PAGE)
    if c["HeapMaxSize"] > c.heap_init:
        heap += _node((c["HeapMaxSize"] - c.heap_init) // PAGE)
    rsrv = _node(c["ReservedMemMinSize"] // PAGE)
    if c.rsrv_init > c["ReservedMemMinSize"]:
        rsrv += _node((c.rsrv_init - c["ReservedMemMinSize"]) // PAGE)
    if c["ReservedMemMaxSize"] > c.rsrv_init:
        rsrv += _node((c["ReservedMemMaxSize"] - c.rsrv_init) // PAGE)
    stack_min, stack_max = c["StackMinSize"], c["StackMaxSize"]
    kept = EMA + _node(stack_min // PAGE)
    removed = EMA + EMA
    if stack_max > stack_min:
        kept += _node((stack_max - stack_min) // PAGE)
        removed += EMA
    kept += EMA + _node(1) + _node(ssa_frame_size * SSA_NUM) + EMA + _node(td_pages(elf))
    removed += EMA + EMA + EMA + EMA + EMA
    min_pool, eremove = c.min_pool, c.eremove
    total_kept = kept * (1 + min_pool)
    total_removed = removed * (1 + eremove)  # counted once even without EREMOVE threads
    if c.tcs_max_num > min_pool + 1:
        total_kept += kept * (c.tcs_max_num - min_pool)
    sections = sum(_node(round_up(s.memsz, PAGE) // PAGE) for s in elf.segments)
    return heap + rsrv + total_kept + total_removed + sections + EMA


def build_layout(c: EnclaveConfig, elf: EnclaveElf, ssa_frame_size: int, meta_versions: int,
                 tcs_offset: int, gd_layout_capacity: int = 43) -> Layout:
    items: list[Item] = [Entry(HEAP_MIN, c["HeapMinSize"] // PAGE, EADD, SI_RW)]
    if c.heap_init > c["HeapMinSize"]:
        items.append(Entry(HEAP_INIT, (c.heap_init - c["HeapMinSize"]) // PAGE,
                           EADD | POST_REMOVE | POST_ADD, SI_RW))
    if c["HeapMaxSize"] > c.heap_init:
        items.append(Entry(HEAP_MAX, (c["HeapMaxSize"] - c.heap_init) // PAGE, POST_ADD, SI_RW))

    template = thread_template(c, elf, ssa_frame_size, tcs_offset)
    n = len(template)
    for e in template:  # the utility thread: part of its stack can come and go
        attrs = e.attributes | (POST_ADD | POST_REMOVE if e.id == STACK_MAX else 0)
        items.append(replace(e, attributes=attrs))
    min_pool, eremove = c.min_pool, c.eremove
    if min_pool > 0:
        items += [replace(e) for e in template]
        if min_pool > 1:
            items.append(Group(THREAD_GROUP, n, min_pool - 1))
    if eremove > 0:
        items += [replace(e, attributes=e.attributes | (EREMOVE if e.id != GUARD else 0))
                  for e in template]
        if eremove > 1:
            items.append(Group(THREAD_GROUP, n, eremove - 1))
    if c.tcs_max_num > min_pool + 1:
        for e in template:
            if e.id == STACK_MAX:
                items.append(replace(e, id=e.id + DYN_OFFSET, attributes=POST_ADD | GROW_DOWN))
            elif e.id != GUARD:
                items.append(replace(e, id=e.id + DYN_OFFSET, attributes=POST_ADD | DYN_THREAD))
            else:
                items.append(replace(e))
        items.append(Group(THREAD_GROUP_DYN, n, c.tcs_max_num - min_pool - 1))

    rmin, rinit, rmax = c["ReservedMemMinSize"], c.rsrv_init, c["ReservedMemMaxSize"]
    if rmin or rinit or rmax:
        si = SI_RWX if c.rsrv_executable else SI_RW
        items.append(Entry(RSRV_MIN, rmin // PAGE, EADD, si))
        if rinit > rmin:
            items.append(Entry(RSRV_INIT, (rinit - rmin) // PAGE, EADD | POST_REMOVE | POST_ADD, si))
        if rmax > rinit:
            items.append(Entry(RSRV_MAX, (rmax - rinit) // PAGE, POST_ADD, SI_RW))

    edmm_bk_overhead = 0
    if meta_versions & 2:
        user_region = c["UserRegionSize"]
        overhead = 0
        if user_region > 0:
            # one byte of EMA bookkeeping roughly covers 2^15 bytes of user region
            overhead = max(PAGE, round_up(user_region >> 15, PAGE))
        overhead += rts_bookkeeping_overhead(c, elf, ssa_frame_size)
        edmm_bk_overhead = round_up(overhead + 32, 0x10000)
        user_region += edmm_bk_overhead + 2 * 0x8000
        items.append(Entry(USER_REGION, user_region // PAGE, POST_ADD, SI_RW))

    cursor = elf.image_end
    for i, item in enumerate(items):
        if isinstance(item, Group):
            item.load_step = span_bytes(items[i - item.entry_count : i])
            cursor += item.load_times * item.load_step
        else:
            item.rva = cursor
            cursor += item.page_count * PAGE
    enclave_size = 1
    while enclave_size < cursor:
        enclave_size <<= 1
    if enclave_size >= 1 << 64:
        raise SignError("The required memory is too large. Please check TCSNum/HeapMaxSize/StackMaxSize.")
    if enclave_size > cursor:
        items.append(Entry(GUARD, (enclave_size - cursor) // PAGE, rva=cursor))
    if len(items) > gd_layout_capacity:
        raise SignError("Out of memory.",
                        f"(the layout needs {len(items)} entries; global data holds {gd_layout_capacity})")
    for item in items:
        if isinstance(item, Entry) and item.page_count >= 1 << 32:
            raise SignError(f"layout entry {item.id} needs {item.page_count} pages (more than 2^32)")
    return Layout(items, enclave_size, edmm_bk_overhead)


def metadata_versions(c: EnclaveConfig, css_misc_select: int,
                      shared_dynamic_info: bool) -> tuple[int, str]:
    """Which metadata blobs are needed (bit 0 = SGX1, bit 1 = SGX2) and sgx_sign's INFO line.

    ``css_misc_select`` is what the profile writes into SIGSTRUCT; the "dynamic" decision
    uses the raw MiscSelect in every profile.
    """
    sel0 = css_misc_select & 1
    mask0 = c["MiscMask"] & 1
    desired0 = c["MiscSelect"] & 1
    if c["UserRegionSize"] > 0:
        if not (sel0 and mask0):
            raise SignError("ERROR: Enclave configuration 'UserRegionSize' requires "
                            "MiscSelect[0] and MiscMask[0] set to 1.")
        return 2, ("INFO: Enclave configuration 'UserRegionSize' requires the enclave to be "
                   "run on SGX2 platform.")
    dynamic = not (
        c.heap_init == c["HeapMinSize"] == c["HeapMaxSize"]
        and c["StackMaxSize"] == c["StackMinSize"]
        and c.rsrv_init == c["ReservedMemMinSize"] == c["ReservedMemMaxSize"]
        and c.tcs_max_num == c.min_pool + 1
    )
    if dynamic:
        if desired0 == 0:
            return 1, ("INFO: Enclave configuration 'MiscSelect' and 'MiscSelectMask' will "
                       "prevent enclave from using dynamic features. To use the dynamic features "
                       "on SGX2 platform, suggest to set MiscMask[0]=0 and MiscSelect[0]=1.")
        versions = 2 if mask0 == 1 else 3
        if shared_dynamic_info:
            return versions, ("INFO: Enclave configuration 'MiscSelect' and 'MiscSelectMask' will "
                              "prevent enclave from running on SGX1 platform. To make it run on "
                              "SGX1 platform, suggest to set MiscSelect[0]=0.")
        if versions == 2:
            return 2, "INFO: SGX2 only enclave, can only run on SGX2 platform."
        return 3, ("INFO: Enclave can run on both SGX1 and SGX2 platforms. Only on SGX2 "
                   "platform can it take advantage of dynamic features.")
    if sel0 == 1:
        return 1, ("INFO: Enclave configuration 'MiscSelect' and 'MiscSelectMask' will prevent "
                   "enclave from running on SGX1 platform.")
    return 1, "INFO: SGX1 only enclave, which will run on all platforms."
