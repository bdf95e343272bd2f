"""Enclave.xml is read with sgx_sign's rules: strtoull numbers, strict elements, given-flags."""

from __future__ import annotations

import pytest

from occlum_rules.stages.sign.enclave_xml import parse_enclave_xml, strtoull_strict
from occlum_rules.stages.sign.errors import SignError
from occlum_rules.stages.sign.profiles import INTEL_2_26, OCCLUM_2_20


def xml(*elements: str) -> bytes:
    return ("<EnclaveConfiguration>" + "".join(elements) + "</EnclaveConfiguration>").encode()


@pytest.mark.parametrize("text,value", [
    ("0x1000", 0x1000), ("0X1f", 0x1F), ("010", 8), ("0", 0), ("4096", 4096), ("+7", 7),
    ("  12", 12), ("18446744073709551615", 2**64 - 1), ("0xFFFFFFFFFFFFFFFF", 2**64 - 1),
])
def test_strtoull_accepts(text: str, value: int) -> None:
    assert strtoull_strict(text) == value


@pytest.mark.parametrize("text", [
    "-1", "1-", "08", "0x", "0xg", "12 ", "1k", "18446744073709551616", "0x10000000000000000", " ",
    "1.0",
])
def test_strtoull_rejects(text: str) -> None:
    assert strtoull_strict(text) is None


def test_octal_value_is_octal() -> None:
    c = parse_enclave_xml(xml("<TCSNum>010</TCSNum>"), INTEL_2_26)
    assert c["TCSNum"] == 8


def test_defaults_and_effective_values() -> None:
    c = parse_enclave_xml(None, INTEL_2_26)
    assert (c["StackMaxSize"], c["HeapMaxSize"], c["MiscMask"], c["TCSMinPool"]) == (0x40000, 0x1000000, 0xFFFFFFFF, 1)
    assert c.heap_init == 0x1000000  # HeapInitSize not given: effective = HeapMaxSize
    assert c.tcs_max_num == 1
    c = parse_enclave_xml(xml("<TCSNum>4</TCSNum>", "<HeapInitSize>0x2000</HeapInitSize>"), INTEL_2_26)
    assert c.tcs_max_num == 4 and c.heap_init == 0x2000
    assert c.min_pool == 1 and c.eremove == 2


@pytest.mark.parametrize("body,message", [
    ("<Foo>1</Foo>", 'Element is not recognized - "Foo".'),
    ("<ProdID>1</ProdID><ProdID>2</ProdID>", 'Defined "ProdID" too many times.'),
    ("<ProdID>0x10000</ProdID>", 'The value of "ProdID" is out of range.'),
    ("<TCSNum>0</TCSNum>", 'The value of "TCSNum" is out of range.'),
    ("<ProdID>-1</ProdID>", 'Invalid value for the element"ProdID".'),
    ("<ProdID></ProdID>", 'No value for the element "ProdID".'),
    ("<ProdID>   </ProdID>", 'No value for the element "ProdID".'),
    ('<ProdID a="1">1</ProdID>', "Configuration file format is not correct."),
    ("<StackMinSize>0x3000</StackMinSize><StackMaxSize>0x2000</StackMaxSize>", "Stack size setting is not correct."),
    ("<HeapMaxSize>0x1001</HeapMaxSize>", "size is not page aligned"),
    ("<HeapInitSize>0x3000</HeapInitSize><HeapMaxSize>0x2000</HeapMaxSize>", "init value should not be larger"),
    ("<HeapMinSize>0x3000</HeapMinSize><HeapMaxSize>0x2000</HeapMaxSize>", "max value should not be smaller"),
    ("<TCSNum>4</TCSNum><TCSMaxNum>2</TCSMaxNum>", "Maximum number of TCS is not correct."),
    ("<TCSNum>2</TCSNum><TCSMinPool>3</TCSMinPool>", "Minimum number of TCS Pool is not correct."),
    ("<ISVFAMILYID_H>1</ISVFAMILYID_H>", "KSS must be enabled"),
    ("<LaunchKey>1</LaunchKey>", "Conflicting setting between the 'HW' and 'LaunchKey'."),
    ("<UserRegionSize>0x1001</UserRegionSize>", "User region size setting is not correct"),
    ("<EnableIPPFIPS>1</EnableIPPFIPS>", "never be reproduced"),
    ("<ELRangeSize>0x100000</ELRangeSize>", "ELRANGE"),
    ("text<ProdID>1</ProdID>", "Configuration file format is not correct."),
])
def test_rejections(body: str, message: str) -> None:
    with pytest.raises(SignError) as err:
        parse_enclave_xml(xml(body), INTEL_2_26)
    assert message in str(err.value)


def test_profile_decides_known_elements() -> None:
    parse_enclave_xml(xml("<EnableIPPFIPS>0</EnableIPPFIPS>"), INTEL_2_26)
    with pytest.raises(SignError, match='not recognized - "EnableIPPFIPS"'):
        parse_enclave_xml(xml("<EnableIPPFIPS>0</EnableIPPFIPS>"), OCCLUM_2_20)


def test_given_flag_matters_not_only_value() -> None:
    # TCSMinPool > TCSNum is fine when TCSMaxNum is given and large enough
    parse_enclave_xml(xml("<TCSNum>2</TCSNum><TCSMaxNum>8</TCSMaxNum><TCSMinPool>5</TCSMinPool>"), INTEL_2_26)
    # ReservedMemExecutable counts only when given
    c = parse_enclave_xml(xml("<ReservedMemMaxSize>0x1000</ReservedMemMaxSize>"), INTEL_2_26)
    assert c.rsrv_executable == 0 and c.rsrv_init == 0x1000


def test_malformed_xml_and_pretty_print() -> None:
    with pytest.raises(SignError, match="format is not correct"):
        parse_enclave_xml(b"<EnclaveConfiguration><ProdID>1</EnclaveConfiguration>", INTEL_2_26)
    c = parse_enclave_xml(b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- hi -->\n'
                          b"<EnclaveConfiguration>\n<ProdID> 1</ProdID><!--x--><ISVSVN>2</ISVSVN>"
                          b"</EnclaveConfiguration>", INTEL_2_26)
    assert c["ProdID"] == 1 and c["ISVSVN"] == 2
    assert c.printed == ('<?xml version="1.0" encoding="UTF-8"?>\n<!-- hi -->\n<EnclaveConfiguration>\n'
                         "    <ProdID> 1</ProdID>\n    <!--x-->\n    <ISVSVN>2</ISVSVN>\n"
                         "</EnclaveConfiguration>\n")


def test_wrong_root_is_rejected() -> None:
    with pytest.raises(SignError, match="format is not correct"):
        parse_enclave_xml(b"<Enclave><ProdID>1</ProdID></Enclave>", INTEL_2_26)
