"""parse_size: sizes as users write them, converted exactly (never through a float)."""

import pytest

from mempool import AnonymousMemory
from mempool._units import parse_size, round_up


@pytest.mark.parametrize("text, n", [
    ("9007199254740993", 9007199254740993),  # 2**53 + 1: a float gives ...992
    ("18446744073709551617", (1 << 64) + 1),
    (" 123456789012345678901234567890 B ", 123456789012345678901234567890),
    ("1.5KiB", 1536), ("1.5 GiB", 3 << 29), ("0.5KiB", 512), ("1.5kb", 1500),
    ("2.25MiB", 9 << 18), ("64MiB", 64 << 20), ("512KB", 512_000), ("3T", 3 << 40),
    ("8589934592.5K", (8589934592 << 10) + 512),
])
def test_exact_sizes(text, n):
    assert parse_size(text) == n and type(parse_size(text)) is int


def test_fractional_bytes_are_refused_naming_the_input():
    for text in ["0.5B", "0.5", "1.0000000000000001KiB", "1.3KiB", "0.0000001MB",
                 "1.000000000000000000001TB"]:
        with pytest.raises(ValueError, match=rf"^size {text!r} is not a whole number of bytes$"):
            parse_size(text)
    with pytest.raises(ValueError, match=r"^capacity '1.5' is not a whole number"):
        parse_size("1.5", "capacity")


def test_exponents_and_garbage_stay_refused():
    for text in ["1e3", "1E3", "1.5e3KiB", ".5KiB", "5.KiB", "-1", "1 0", "12XiB", ""]:
        with pytest.raises(ValueError, match="must be an integer or a size such as"):
            parse_size(text)
    for text in ["0", "0B", "0.0KiB"]:
        with pytest.raises(ValueError, match=">= 1"):
            parse_size(text)


def test_too_many_digits_is_a_clear_error():
    text = "9" * 5000 + "KiB"
    with pytest.raises(ValueError, match="too many digits"):
        parse_size(text)


def test_ints_and_types():
    assert parse_size(9007199254740993) == 9007199254740993
    with pytest.raises(TypeError):
        parse_size(1.5)
    with pytest.raises(TypeError):
        parse_size(b"1KiB")


def test_sources_take_exact_string_sizes():
    m = AnonymousMemory("1.5KiB")
    assert m.size == 4096
    m.close()
    with pytest.raises(ValueError, match="whole number"):
        AnonymousMemory("0.5B")


def test_round_up_is_the_one_helper():
    assert [round_up(n, 4096) for n in (1, 4095, 4096, 4097)] == [4096, 4096, 4096, 8192]
    assert round_up((1 << 64) + 1, 1 << 21) == (1 << 64) + (1 << 21)  # ints, no float
    import mempool.regions
    import mempool.sources

    assert mempool.regions._round_up is round_up  # one definition, not a copy per module
    assert not hasattr(mempool.sources, "_round_up")
