"""Unit tests for proxy_addon.yamlconf, the typed YAML reader on its own (no authproxy schema)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from proxy_addon.yamlconf import (
    ConfigError,
    MissingVariable,
    Reader,
    Unavailable,
    UniqueKeyLoader,
    Verbatim,
    env_problems,
    expand_env,
    kind_of,
    load_yaml,
    missing_error,
    missing_variables,
    unavailable,
)

SOURCE = "app.yaml"


def reader(data: Any, env: dict[str, str] | None = None, **kw: Any) -> Reader:
    return Reader(data, SOURCE, "", env or {}, **kw)


def error_of(read: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read()
    return info.value


def assert_error(err: ConfigError, key: str, message: str) -> None:
    """The error names the file and the key path, and says `message` (a regex)."""
    assert (err.source, err.key) == (SOURCE, key)
    assert re.search(message, err.message), err.message
    assert str(err) == (f"{SOURCE}: {key}: {err.message}" if key else f"{SOURCE}: {err.message}")


# --- YAML ----------------------------------------------------------------------------------------


def test_load_yaml_gives_the_data() -> None:
    assert load_yaml("a: 1\nb: [x, y]\n", SOURCE) == {"a": 1, "b": ["x", "y"]}
    assert load_yaml("", SOURCE) is None


@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [("a: 1\nb: 2\na: 3\n", 3, "'a'", 1),
     ("outer:\n  x: 1\n  y: 2\n  x: 3\n", 4, "'x'", 2),
     ("1: a\n1: b\n", 2, "1", 1)],
)  # fmt: skip
def test_duplicate_keys_are_refused_with_both_lines(
    text: str, line: int, key: str, first: int
) -> None:
    err = error_of(lambda: load_yaml(text, SOURCE))
    assert_error(err, "", rf"^not valid YAML: line {line}, .*duplicate key {key} \(first given "
                          rf"on line {first}\)$")  # fmt: skip


def test_the_same_key_in_two_mappings_is_no_duplicate() -> None:
    assert load_yaml("a: {k: 1}\nb: {k: 2}\n", SOURCE) == {"a": {"k": 1}, "b": {"k": 2}}


def test_merge_keys_merge_and_may_be_overridden() -> None:
    # Routes that share most settings are written with anchors; `<<` is no duplicate key.
    text = ("base: &b {scheme: https, port: 443}\n"
            "one: {<<: *b, host: a.example}\n"
            "two: {<<: *b, port: 8443}\n")  # fmt: skip
    data = load_yaml(text, SOURCE)
    assert data["one"] == {"scheme": "https", "port": 443, "host": "a.example"}
    assert data["two"] == {"scheme": "https", "port": 8443}


def test_a_key_given_twice_beside_a_merge_is_still_refused() -> None:
    err = error_of(lambda: load_yaml("b: &b {x: 1}\nc: {<<: *b, y: 1, y: 2}\n", SOURCE))
    assert_error(err, "", r"duplicate key 'y'")


def test_yaml_syntax_error_names_line_and_column() -> None:
    err = error_of(lambda: load_yaml("a: [1, 2\nb: 3\n", SOURCE))
    assert_error(err, "", r"^not valid YAML: line \d+, column \d+: ")


def test_only_safe_yaml() -> None:
    err = error_of(lambda: load_yaml("a: !!python/object/apply:os.getcwd []\n", SOURCE))
    assert_error(err, "", "not valid YAML")


def test_the_c_loader_is_used_when_there_is_one() -> None:
    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    assert issubclass(UniqueKeyLoader, yaml.CSafeLoader)


# --- environment references ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "env", "expected"),
    [("${A}", {"A": "x"}, "x"),
     ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
     ("$$", {}, "$"),
     ("$${A}", {"A": "x"}, "${A}"),
     ("${A:-d}", {}, "d"), ("${A:-d}", {"A": ""}, "d"), ("${A:-d}", {"A": "x"}, "x"),
     ("${A-d}", {}, "d"), ("${A-d}", {"A": ""}, ""),
     ("${A:?why}", {"A": "x"}, "x"), ("${A?why}", {"A": ""}, ""),
     ("no references", {}, "no references")],
)  # fmt: skip
def test_expand_env(written: str, env: dict[str, str], expected: str) -> None:
    assert expand_env(written, env, SOURCE, "k") == expected


@pytest.mark.parametrize(
    ("written", "env", "missing"),
    [("${A}", {}, [MissingVariable("A", "k", None)]),
     ("${A}${B}", {"B": "b"}, [MissingVariable("A", "k", None)]),
     ("${A:?set it to the key}", {"A": ""}, [MissingVariable("A", "k", "set it to the key")]),
     ("${A?}", {}, [MissingVariable("A", "k", None)]),
     ("${A}/${B}", {}, [MissingVariable("A", "k", None), MissingVariable("B", "k", None)]),
     ("${A:-d}", {}, []), ("$$", {}, [])],
)  # fmt: skip
def test_env_problems(written: str, env: dict[str, str], missing: list[MissingVariable]) -> None:
    assert env_problems(written, env, SOURCE, "k") == missing


@pytest.mark.parametrize("written", ["$A", "cost: 5$", "${A", "${1A}", "${A:x}"])
def test_a_stray_dollar_is_an_error(written: str) -> None:
    err = error_of(lambda: env_problems(written, {"A": "x"}, SOURCE, "a.b"))
    assert_error(err, "a.b", r"^unsupported '\$' at .*write \$\{VAR\}.*\$\$ for a literal \$$")


def test_one_missing_variable_names_it_and_its_key() -> None:
    err = error_of(lambda: expand_env("${TOKEN:?ask the admin}", {}, SOURCE, "svc.token"))
    assert_error(err, "svc.token", r"^environment variable TOKEN is not set: ask the admin$")


def test_missing_variables_are_all_found_with_their_key_paths() -> None:
    data = {"a": {"b": "${X}", "c": ["${Y}", {"d": "${Z:?why}"}]}, "e": "${A:-ok}", "n": 5}
    found = missing_variables(data, {}, SOURCE)
    assert found == [MissingVariable("X", "a.b", None), MissingVariable("Y", "a.c", None),
                     MissingVariable("Z", "a.c[1].d", "why")]  # fmt: skip
    err = missing_error(SOURCE, found)
    assert_error(err, "", r"^environment variables not set: X \(for a\.b\), Y \(for a\.c\), "
                          r"Z \(for a\.c\[1\]\.d: why\)$")  # fmt: skip
    assert missing_variables("${X}", {}, SOURCE) == [MissingVariable("X", "(top level)", None)]


# --- typed reading -------------------------------------------------------------------------------


def test_typed_values() -> None:
    r = reader(
        {"s": "x", "n": 2.5, "i": 7, "b": True, "c": "two", "w": "a b", "l": ["a", "${V}"],
         "m": {"k": "${V}"}, "num_text": 3},
        env={"V": "v"},
    )  # fmt: skip
    assert r.text("s") == "x" and r.text("num_text") == "3" and r.text("absent", "d") == "d"
    assert r.number("n", 0) == 2.5 and r.number("i", 0) == 7.0
    assert r.integer("i", 0, minimum=0, maximum=10) == 7
    assert r.bool("b", False) is True and r.bool("absent", False) is False
    assert r.choice("c", ("one", "two"), "one") == "two"
    assert r.words("w") == ("a", "b") and r.words("l") == ("a", "v") and r.words("absent") == ()
    assert r.string_map("m") == {"k": "v"}
    r.done()


@pytest.mark.parametrize(
    ("data", "read", "key", "message"),
    [({"x": 5}, lambda r: r.bool("x", False), "x", r"^expected true or false, got 5$"),
     ({"x": "yes"}, lambda r: r.bool("x", False), "x", "expected true or false, got 'yes'"),
     ({"x": True}, lambda r: r.number("x", 1), "x", r"^expected a number >= 0, got True$"),
     ({"x": -1}, lambda r: r.number("x", 1), "x", r"^expected a number >= 0, got -1$"),
     ({"x": float("nan")}, lambda r: r.number("x", 1), "x", r"^expected a number >= 0, got nan$"),
     ({"x": "many"}, lambda r: r.number("x", 1), "x", r"^expected a number >= 0, got 'many'$"),
     ({"x": 0.05}, lambda r: r.number("x", 1, minimum=0.1), "x", r"expected a number >= 0\.1"),
     ({"x": 1.5}, lambda r: r.integer("x", 1, minimum=0, maximum=9), "x",
      r"^expected a whole number from 0 to 9, got 1\.5$"),
     ({"x": 10}, lambda r: r.integer("x", 1, minimum=0, maximum=9), "x", "from 0 to 9, got 10"),
     ({"x": [1]}, lambda r: r.text("x"), "x", r"^expected a string, got a list$"),
     ({"x": {}}, lambda r: r.text("x"), "x", r"^expected a string, got a mapping$"),
     ({"x": False}, lambda r: r.text("x"), "x", r"^expected a string, got true/false$"),
     ({"x": ""}, lambda r: r.text("x", required=True), "x", r"^must not be empty$"),
     ({}, lambda r: r.text("x", required=True), "x", r"^is required$"),
     ({"x": "c"}, lambda r: r.choice("x", ("a", "b"), "a"), "x",
      r"^expected one of a, b, got 'c'$"),
     ({"x": [1, "a"]}, lambda r: r.words("x"), "x", r"^expected a list of strings, got a list$"),
     ({"x": 3}, lambda r: r.section("x"), "x", r"^expected a mapping, got int$"),
     ({"x": {"k": None}}, lambda r: r.string_map("x"), "x.k", r"^is required$")],
)  # fmt: skip
def test_type_errors_name_file_key_and_expectation(
    data: dict[str, Any], read: Any, key: str, message: str
) -> None:
    assert_error(error_of(lambda: read(reader(data))), key, message)


def test_key_paths_of_nested_sections() -> None:
    top = reader({"outer": {"inner": {"port": "x"}}})
    inner = top.section("outer").section("inner")
    err = error_of(lambda: inner.integer("port", 1, minimum=1, maximum=2))
    assert_error(err, "outer.inner.port", "expected a whole number")
    assert Reader({"k": 1}, SOURCE, "routes[2]", {}).error("k", "m").key == "routes[2].k"


def test_top_level_not_a_mapping() -> None:
    err = error_of(lambda: reader(["a"]))
    assert_error(err, "(top level)", r"^expected a mapping, got a list$")
    assert_error(error_of(lambda: reader(None)), "(top level)", r"got nothing$")


def test_an_absent_section_is_empty() -> None:
    assert reader({}).section("s").data == {}


def test_variables_are_expanded_when_read_and_named_by_key_path() -> None:
    r = reader({"s": {"secret": "${S}"}})
    err = error_of(lambda: r.section("s").text("secret"))
    assert_error(err, "s.secret", r"^environment variable S is not set$")


def test_a_verbatim_value_is_never_expanded() -> None:
    assert reader({"k": Verbatim("p$ss${X}")}).text("k") == "p$ss${X}"


# --- unknown keys and typos ----------------------------------------------------------------------


def test_unknown_key_suggests_a_key_that_was_read() -> None:
    r = reader({"timeout": 1, "retires": 3})
    r.number("timeout", 0)
    r.integer("retries", 0, minimum=0, maximum=9)
    assert_error(error_of(r.done), "retires", r"^unknown key \(did you mean 'retries'\?\)$")


def test_unknown_key_without_a_close_one() -> None:
    r = reader({"timeout": 1, "zzz": 3})
    r.number("timeout", 0)
    assert_error(error_of(r.done), "zzz", r"^unknown key$")
    r.done(allowed_also=("zzz",))


def test_a_required_key_missing_points_at_its_typo() -> None:
    err = error_of(lambda: reader({"client_secert": "x"}).text("client_secret", required=True))
    assert_error(err, "client_secret", r"^is required \(is 'client_secert' a typo of it\?\)$")


def test_a_section_read_is_not_unknown() -> None:
    r = reader({"s": {"k": 1}})
    r.section("s")
    r.done()


def test_with_defaults_keeps_what_was_read_and_the_defaults_are_known() -> None:
    r = reader({"a": 1, "b": 2})
    r.integer("a", 0, minimum=0, maximum=9)
    merged = r.with_defaults({"b": 9, "preset_only": "p"})
    assert merged.integer("b", 0, minimum=0, maximum=9) == 2  # the file beats the defaults
    merged.done()  # a was read before, preset_only came with the defaults


def test_with_data_keeps_place_and_what_was_read() -> None:
    r = Reader({"a": 1, "f": "x"}, SOURCE, "svc", {}, lenient_keys=frozenset({"t"}))
    r.text("f")
    swapped = r.with_data({"a": 1, "f": "x", "t": "${T}"})
    assert swapped.path == "svc" and swapped.lenient_keys == frozenset({"t"})
    assert unavailable(swapped.text("t"))
    assert_error(error_of(swapped.done), "svc.a", r"^unknown key$")


# --- lenient keys --------------------------------------------------------------------------------


def test_a_lenient_key_with_a_missing_variable_is_unavailable() -> None:
    r = reader({"secret": "${S}", "other": "${S}"}, lenient_keys=frozenset({"secret"}))
    value = r.text("secret")
    assert isinstance(value, Unavailable) and unavailable(value)
    assert value == "<secret not available>"
    assert_error(error_of(lambda: r.text("other")), "other", "environment variable S is not set")


def test_leniency_reaches_every_section_below() -> None:
    r = reader({"a": {"b": {"secret": "${S}"}}}, lenient_keys=frozenset({"secret"}))
    assert unavailable(r.section("a").section("b").text("secret", required=True))


def test_without_lenient_keys_a_missing_variable_is_an_error() -> None:
    err = error_of(lambda: reader({"a": {"secret": "${S}"}}).section("a").text("secret"))
    assert_error(err, "a.secret", "environment variable S is not set")


def test_a_lenient_key_whose_variable_is_set_is_read() -> None:
    r = reader({"secret": "${S}"}, env={"S": "v"}, lenient_keys=frozenset({"secret"}))
    value = r.text("secret")
    assert value == "v" and not unavailable(value)


def test_a_lenient_key_still_refuses_a_stray_dollar() -> None:
    r = reader({"secret": "$S"}, lenient_keys=frozenset({"secret"}))
    assert_error(error_of(lambda: r.text("secret")), "secret", "unsupported '\\$'")


def test_kind_of() -> None:
    assert [kind_of(v) for v in (None, {}, [], "", True, 3, 1.5)] == [
        "nothing", "a mapping", "a list", "a string", "true/false", "int", "float"
    ]  # fmt: skip
