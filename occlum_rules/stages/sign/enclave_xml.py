"""Enclave.xml, read the way sgx_sign reads it.

sgx_sign parses the file with tinyxml2, pretty-prints it to stdout, then walks the
children of ``<EnclaveConfiguration>`` converting each text with C ``strtoull(text, &end, 0)``.
The quirks matter for compatibility: ``010`` is octal, any ``-`` is an error, trailing junk
or overflow is an error, an unknown or repeated element is an error, and several rules
depend on whether an element was *given*, not only on its value.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from xml.parsers import expat

from occlum_rules.stages.sign.errors import FORMAT_ERROR, SignError
from occlum_rules.stages.sign.profiles import SdkProfile

PAGE = 0x1000
H = 0x7FFF_FFFF_FFFF_FFFF  # ENCLAVE_MAX_SIZE_64 / 2
U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF

# name -> (min, max, default)
RANGES: dict[str, tuple[int, int, int]] = {
    "ProdID": (0, 0xFFFF, 0),
    "ISVSVN": (0, 0xFFFF, 0),
    "ReleaseType": (0, 1, 0),
    "IntelSigned": (0, 1, 0),
    "ProvisionKey": (0, 1, 0),
    "LaunchKey": (0, 1, 0),
    "DisableDebug": (0, 1, 0),
    "HW": (0, 0x10, 0),
    "TCSNum": (1, U32, 1),
    "TCSMaxNum": (1, U32, 1),
    "TCSMinPool": (0, U32, 1),
    "TCSPolicy": (0, 1, 1),
    "StackMaxSize": (0x2000, H, 0x40000),
    "StackMinSize": (0x2000, H, 0x2000),
    "HeapMaxSize": (0, H, 0x1000000),
    "HeapMinSize": (0, H, 0x1000),
    "HeapInitSize": (0, H, 0x1000),
    "ReservedMemMaxSize": (0, H, 0),
    "ReservedMemMinSize": (0, H, 0),
    "ReservedMemInitSize": (0, H, 0),
    "ReservedMemExecutable": (0, 1, 0),
    "MiscSelect": (0, U32, 0),
    "MiscMask": (0, U32, U32),
    "EnableKSS": (0, 1, 0),
    "ISVFAMILYID_H": (0, U64, 0),
    "ISVFAMILYID_L": (0, U64, 0),
    "ISVEXTPRODID_H": (0, U64, 0),
    "ISVEXTPRODID_L": (0, U64, 0),
    "EnclaveImageAddress": (0x1000, U64, 0),
    "ELRangeStartAddress": (0, U64, 0),
    "ELRangeSize": (0x1000, U64, 0),
    "PKRU": (0, 2, 0),
    "AMX": (0, 2, 0),
    "UserRegionSize": (0, H, 0),
    "EnableAEXNotify": (0, 1, 0),
    "EnableIPPFIPS": (0, 1, 0),
    "EnableOSSLFIPS": (0, 1, 0),
}


# ---------------------------------------------------------------------------------------
# A tiny document model, enough to mirror tinyxml2's GetText() and pretty printer.


@dataclass
class _Node:
    kind: str  # "element", "text", "comment", "decl"
    value: str = ""
    attrs: list[tuple[str, str]] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)

    def get_text(self) -> str | None:
        """tinyxml2 GetText(): the first child's text if that child is text."""
        if self.children and self.children[0].kind == "text":
            return self.children[0].value
        return None


def _parse_document(data: bytes) -> list[_Node]:
    top: list[_Node] = []
    stack: list[_Node] = []
    pending: list[str] = []

    def container() -> list[_Node]:
        return stack[-1].children if stack else top

    def flush_text() -> None:
        if pending:
            text = "".join(pending)
            pending.clear()
            # tinyxml2 skips whitespace before identifying a node, so whitespace-only
            # text never becomes a node; other text keeps its leading whitespace.
            if text.strip(" \t\r\n"):
                container().append(_Node("text", text))

    def start(name: str, attrs: list[str]) -> None:
        flush_text()
        node = _Node("element", name, attrs=list(zip(attrs[::2], attrs[1::2])))
        container().append(node)
        stack.append(node)

    def end(name: str) -> None:
        flush_text()
        stack.pop()

    def comment(text: str) -> None:
        flush_text()
        container().append(_Node("comment", text))

    def xml_decl(version: str | None, encoding: str | None, standalone: int) -> None:
        parts = []
        if version is not None:
            parts.append(f'version="{version}"')
        if encoding is not None:
            parts.append(f'encoding="{encoding}"')
        if standalone != -1:
            parts.append('standalone="%s"' % ("yes" if standalone else "no"))
        top.append(_Node("decl", "xml " + " ".join(parts)))

    parser = expat.ParserCreate()
    parser.ordered_attributes = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = pending.append
    parser.CommentHandler = comment
    parser.XmlDeclHandler = xml_decl
    parser.Parse(data, True)
    return top


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Printer:
    """tinyxml2's XMLPrinter in its default (non-compact) mode."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.depth = 0
        self.text_depth = -1
        self.first_element = True
        self.just_opened = False

    def _seal(self) -> None:
        if self.just_opened:
            self.out.append(">")
            self.just_opened = False

    def _newline_indent(self) -> None:
        if self.text_depth < 0 and not self.first_element:
            self.out.append("\n" + "    " * self.depth)

    def node(self, n: _Node) -> None:
        if n.kind == "element":
            self._seal()
            self._newline_indent()
            self.first_element = False
            self.out.append("<" + n.value)
            for key, value in n.attrs:
                self.out.append(f' {key}="{_escape(value)}"')
            self.just_opened = True
            self.depth += 1
            for child in n.children:
                self.node(child)
            self.depth -= 1
            if self.just_opened:
                self.out.append("/>")
                self.just_opened = False
            else:
                if self.text_depth < 0:
                    self.out.append("\n" + "    " * self.depth)
                self.out.append(f"</{n.value}>")
            if self.text_depth == self.depth:
                self.text_depth = -1
            if self.depth == 0:
                self.out.append("\n")
        elif n.kind == "text":
            self.text_depth = self.depth - 1
            self._seal()
            self.out.append(_escape(n.value))
        elif n.kind == "comment":
            self._seal()
            self._newline_indent()
            self.first_element = False
            self.out.append(f"<!--{n.value}-->")
        elif n.kind == "decl":
            self._seal()
            self._newline_indent()
            self.first_element = False
            self.out.append(f"<?{n.value}?>")


def pretty_print(nodes: list[_Node]) -> str:
    printer = _Printer()
    for n in nodes:
        printer.node(n)
    return "".join(printer.out)


def render_enclave_xml(data: bytes) -> str:
    """What sgx_sign prints to stdout for an Enclave.xml (before it validates anything)."""
    try:
        return pretty_print(_parse_document(data))
    except expat.ExpatError as exc:
        raise SignError(FORMAT_ERROR) from exc


# ---------------------------------------------------------------------------------------
# strtoull(text, &end, 0) with sgx_sign's checks around it.

_DIGITS = {c: i for i, c in enumerate(string.digits + "abcdef")}
_DIGITS.update({c.upper(): v for c, v in _DIGITS.items() if c.isalpha()})


def strtoull_strict(text: str) -> int | None:
    """The value sgx_sign accepts for ``text``, or None where it reports an invalid value.

    Mirrors ``strtoull(text, &end, 0)`` followed by ``*end == '\\0' && errno == 0``, after
    sgx_sign's own rejection of any ``-``.
    """
    if "-" in text:
        return None
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    if i < n and text[i] == "+":
        i += 1
    base = 10
    if text[i : i + 2].lower() == "0x" and i + 2 < n and text[i + 2] in string.hexdigits:
        base, i = 16, i + 2
    elif text[i : i + 1] == "0":
        base = 8
    start = i
    value = 0
    while i < n and text[i] in _DIGITS and _DIGITS[text[i]] < base:
        value = value * base + _DIGITS[text[i]]
        i += 1
    if i == start:
        # No digits at all: strtoull leaves end at the very beginning of the text.
        return 0 if text == "" else None
    if i != n or value > U64:
        return None
    return value


# ---------------------------------------------------------------------------------------


@dataclass
class EnclaveConfig:
    """Parsed Enclave.xml values, with sgx_sign's notion of "was this element given"."""

    values: dict[str, int]
    given: set[str]
    printed: str = ""  # what sgx_sign pretty-prints to stdout ("" without -config)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    # Effective values (the rules that depend on whether an element was given).
    @property
    def heap_init(self) -> int:
        return self["HeapInitSize"] if "HeapInitSize" in self.given else self["HeapMaxSize"]

    @property
    def rsrv_init(self) -> int:
        if "ReservedMemInitSize" in self.given:
            return self["ReservedMemInitSize"]
        return self["ReservedMemMaxSize"]

    @property
    def rsrv_executable(self) -> int:
        return self["ReservedMemExecutable"] if "ReservedMemExecutable" in self.given else 0

    @property
    def tcs_max_num(self) -> int:
        return self["TCSMaxNum"] if "TCSMaxNum" in self.given else self["TCSNum"]

    @property
    def min_pool(self) -> int:
        """Statically added threads besides the utility thread."""
        return min(self["TCSMinPool"], self["TCSNum"] - 1)

    @property
    def eremove(self) -> int:
        """Threads added at load time and removed again (TCSMinPool < TCSNum - 1)."""
        if self["TCSMinPool"] > self["TCSNum"] - 1:
            return 0
        return self["TCSNum"] - 1 - self["TCSMinPool"]

    @property
    def elrange(self) -> bool:
        return self["ELRangeSize"] != 0


def default_config() -> EnclaveConfig:
    return EnclaveConfig({k: v[2] for k, v in RANGES.items()}, set())


def parse_enclave_xml(data: bytes | None, profile: SdkProfile, where: str | None = None) -> EnclaveConfig:
    """Parse and cross-check Enclave.xml bytes (None = sgx_sign's defaults, no -config)."""
    config = default_config()
    if data is not None:
        try:
            nodes = _parse_document(data)
        except expat.ExpatError as exc:
            raise SignError(FORMAT_ERROR, where=where) from exc
        config.printed = pretty_print(nodes)
    try:
        if data is not None:
            _read_elements(nodes, config, profile, where)
        check_config(config, where)
    except SignError as exc:
        exc.printed = config.printed  # sgx_sign prints the XML before it validates it
        raise
    return config


def _read_elements(nodes: list[_Node], config: EnclaveConfig, profile: SdkProfile, where: str | None) -> None:
    roots = [n for n in nodes if n.kind == "element" and n.value == "EnclaveConfiguration"]
    if not roots or roots[0].get_text() is not None:
        raise SignError(FORMAT_ERROR, where=where)
    known = set(profile.elements)
    for child in roots[0].children:
        if child.kind != "element":
            continue
        if child.attrs:
            raise SignError(FORMAT_ERROR, where=where)
        name, text = child.value, child.get_text()
        if text is None:
            raise SignError(f'No value for the element "{name}".', FORMAT_ERROR, where=where)
        value = strtoull_strict(text)
        if value is None:
            raise SignError(f'Invalid value for the element"{name}".', FORMAT_ERROR, where=where)
        if name not in known:
            raise SignError(f'Element is not recognized - "{name}".', FORMAT_ERROR, where=where)
        if name in config.given:
            raise SignError(f'Defined "{name}" too many times.', FORMAT_ERROR, where=where)
        config.given.add(name)
        low, high, _ = RANGES[name]
        if not low <= value <= high:
            raise SignError(f'The value of "{name}" is out of range.', FORMAT_ERROR, where=where)
        config.values[name] = value


def check_config(c: EnclaveConfig, where: str | None = None) -> None:
    """sgx_sign's cross-checks between elements (check_xml_parameter)."""

    def fail(message: str) -> None:
        raise SignError(message, where=where)

    if c["StackMaxSize"] % PAGE or c["StackMinSize"] % PAGE or c["StackMinSize"] > c["StackMaxSize"]:
        fail("Stack size setting is not correct.")
    if c["HeapMaxSize"] % PAGE or c["HeapMinSize"] % PAGE or c["HeapInitSize"] % PAGE:
        fail("Heap size setting is not correct: size is not page aligned.")
    if "HeapInitSize" in c.given:
        if c["HeapInitSize"] > c["HeapMaxSize"]:
            fail("Heap size setting is not correct: init value should not be larger than max value.")
        if c["HeapMinSize"] > c["HeapInitSize"]:
            fail("Heap size setting is not correct: min value should not be larger than init value.")
    elif c["HeapMinSize"] > c["HeapMaxSize"]:
        fail("Heap size setting is not correct: max value should not be smaller than min value.")
    rsrv = ("ReservedMemMaxSize", "ReservedMemMinSize", "ReservedMemInitSize")
    if any(c[n] % PAGE for n in rsrv):
        fail("Reserved memory size setting is not correct: size is not page aligned.")
    if "ReservedMemInitSize" in c.given:
        if c["ReservedMemInitSize"] > c["ReservedMemMaxSize"]:
            fail("Reserved memory size setting is not correct: init value should not be larger than max value.")
        if c["ReservedMemMinSize"] > c["ReservedMemInitSize"]:
            fail("Reserved memory size setting is not correct: min value should not be larger than init value.")
    elif c["ReservedMemMinSize"] > c["ReservedMemMaxSize"]:
        fail("Reserved memory size setting is not correct: max value should not be smaller than min value.")
    if c["UserRegionSize"] % PAGE:
        fail("User region size setting is not correct: size is not page aligned.")
    if (c["HW"] == 0) != (c["LaunchKey"] == 0):
        fail("Conflicting setting between the 'HW' and 'LaunchKey'.")
    if "TCSMaxNum" in c.given:
        if c["TCSMaxNum"] < c["TCSNum"]:
            fail("Maximum number of TCS is not correct.")
        if "TCSMinPool" in c.given and c["TCSMinPool"] > c["TCSMaxNum"]:
            fail("Minimum number of TCS Pool is not correct.")
    elif "TCSMinPool" in c.given and c["TCSMinPool"] > c["TCSNum"]:
        fail("Minimum number of TCS Pool is not correct.")
    kss_ids = ("ISVEXTPRODID_H", "ISVEXTPRODID_L", "ISVFAMILYID_H", "ISVFAMILYID_L")
    if any(c[n] for n in kss_ids) and c["EnableKSS"] == 0:
        fail("KSS must be enabled if ISVEXTPRODID or ISVFAMILYID is set.")
    if "EnclaveImageAddress" in c.given and "ELRangeSize" not in c.given:
        fail("ELRangeSize must be set when EnclaveImageAddress is set.")
    if "ELRangeStartAddress" in c.given and "ELRangeSize" not in c.given:
        fail("ELRangeSize must be set when ELRangeStartAddress is set.")
    if c["EnableIPPFIPS"] and c["EnableOSSLFIPS"]:
        fail("EnableIPPFIPS and EnableOSSLFIPS cannot be enabled at the same time.")
    # Deliberate deviations: refuse what we cannot reproduce byte for byte.
    if c["EnableIPPFIPS"]:
        fail("EnableIPPFIPS=1 embeds a freshly generated RSA key, so the signed enclave can "
             "never be reproduced; occlum-rules does not support it")
    if c["EnableOSSLFIPS"]:
        fail("EnableOSSLFIPS=1 appends the SDK's fips.so to the enclave; occlum-rules does "
             "not support it")
    if c.elrange:
        fail("ELRANGE (ELRangeSize/ELRangeStartAddress/EnclaveImageAddress) is not supported "
             "by occlum-rules' signer (Occlum does not use it)")

