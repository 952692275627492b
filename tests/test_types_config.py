"""Node names, pids and refs (fabric.types); NodeConfig and the cookie (fabric.config)."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from fabric.config import NodeConfig, load_cookie
from fabric.errors import ConfigError
from fabric.types import NodeName, Pid, Ref, parse_node_name

# -- node names ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, name, host, port, short", [
    ("n1@localhost", "n1", "localhost", None, True),
    ("n1@localhost:9100", "n1", "localhost", 9100, True),
    ("n1@127.0.0.1", "n1", "127.0.0.1", None, False),
    ("n1@127.0.0.1:9100", "n1", "127.0.0.1", 9100, False),
    ("worker.3-a_b@db-1.example.com:1", "worker.3-a_b", "db-1.example.com", 1, False),
    ("_x@h:65535", "_x", "h", 65535, True),
    ("n@[::1]:9100", "n", "::1", 9100, False),
    ("n@[fe80::1%eth0]:9100", "n", "fe80::1%eth0", 9100, False),
    ("n@[2001:db8::7]", "n", "2001:db8::7", None, False),
    ("N" * 64 + "@h", "N" * 64, "h", None, True),
])
def test_parse_valid_names(text: str, name: str, host: str, port: int | None,
                           short: bool) -> None:
    parsed = parse_node_name(text)
    assert parsed == NodeName(name, host, port)
    assert (parsed.name, parsed.host, parsed.port) == (name, host, port)
    assert parsed.short is short
    assert parsed.base == f"{name}@{host}"


@pytest.mark.parametrize("text", [
    "n1@localhost:9100", "n1@127.0.0.1:9100", "n@[::1]:9100", "a@b.c", "n1@h",
])
def test_str_round_trips(text: str) -> None:
    assert str(parse_node_name(text)) == text
    assert parse_node_name(str(parse_node_name(text))) == parse_node_name(text)


def test_leading_zeros_in_the_port_are_normalised() -> None:
    assert str(parse_node_name("n@h:09100")) == "n@h:9100"


def test_endpoint_and_with_port() -> None:
    assert parse_node_name("n@h:9100").endpoint() == "tcp://h:9100"
    assert parse_node_name("n@h:9100").endpoint(9200) == "tcp://h:9200"
    assert parse_node_name("n@[::1]:9100").endpoint() == "tcp://[::1]:9100"
    named = parse_node_name("n@h").with_port(9101)
    assert named == NodeName("n", "h", 9101) and str(named) == "n@h:9101"
    with pytest.raises(ConfigError, match="no port"):
        parse_node_name("n@h").endpoint()


@pytest.mark.parametrize("text, says", [
    ("", "name@host"),
    ("nohost", "name@host"),
    ("@host", "before '@'"),
    ("bad name@h", "before '@'"),
    ("-n@h", "before '@'"),
    (".n@h", "before '@'"),
    ("n" * 65 + "@h", "before '@'"),
    ("né@h", "before '@'"),
    ("n@", "not a valid host"),
    ("n@-host", "not a valid host"),
    ("n@ho st", "not a valid host"),
    ("n@h@h", "not a valid host"),
    ("n@" + "h" * 254, "not a valid host"),
    ("n@:9100", "not a valid host"),
    ("n@h:", "not a number"),
    ("n@h:abc", "not a number"),
    ("n@h:-1", "not a number"),
    ("n@h:0", "out of range"),
    ("n@h:65536", "out of range"),
    ("n@h:9100:1", "not a valid host"),
    ("n@::1", "not a valid host"),
    ("n@[::1", "unterminated"),
    ("n@[zz::1]:1", "not an IPv6 address"),
    ("n@[127.0.0.1]:1", "not an IPv6 address"),
    ("n@[::1]9100", "expected ':port'"),
    ("n@[::1]:", "not a number"),
    ("n@[::1]:0", "out of range"),
])
def test_invalid_names_raise_config_error_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        parse_node_name(text)
    assert repr(text) in str(info.value) or not text
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [None, 1, b"n@h:1", ["n@h:1"]], ids=repr)
def test_non_str_names_raise_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match="must be a str"):
        parse_node_name(bad)


@pytest.mark.parametrize("text", ["n@h:¹", "n@h:９１００", "n@[::1]:²"])
def test_ports_must_be_ascii_digits(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_node_name(text)


@pytest.mark.parametrize("text", ["n\n@h:1", "n@h\n", "n@h\n:1"], ids=repr)
def test_trailing_newlines_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_node_name(text)


def test_str_of_an_ipv6_name_without_port_round_trips() -> None:
    assert parse_node_name(str(parse_node_name("n@[::1]"))) == NodeName("n", "::1", None)


def test_names_too_long_for_a_routing_identity_are_rejected() -> None:
    text = "n" * 64 + "@" + "h" * 200 + ":9100"  # base is 265 bytes
    with pytest.raises(ConfigError):
        parse_node_name(text)


# -- pids and refs ---------------------------------------------------------------------------


def test_pid_fields_and_repr() -> None:
    pid = Pid("a@h:1", 5, 7)
    assert (pid.node, pid.id, pid.creation) == ("a@h:1", 5, 7)
    assert repr(pid) == "<a@h:1.5.7>"
    assert repr(Ref("a@h:1", 5, 7)) == "#Ref<a@h:1.5.7>"


def test_pid_equality_and_hash() -> None:
    pid = Pid("a@h:1", 5, 7)
    assert pid == Pid("a@h:1", 5, 7) and hash(pid) == hash(Pid("a@h:1", 5, 7))
    assert (pid != Pid("a@h:1", 5, 7)) is False
    assert pid != Pid("a@h:1", 5, 8)  # another run of the node
    assert pid != Pid("a@h:2", 5, 7) and pid != Pid("a@h:1", 6, 7)
    assert len({pid, Pid("a@h:1", 5, 7), Pid("a@h:1", 5, 8)}) == 2
    assert {pid: 1}[Pid("a@h:1", 5, 7)] == 1


def test_pid_ref_and_tuple_are_never_equal() -> None:
    pid, ref, tup = Pid("a@h:1", 5, 7), Ref("a@h:1", 5, 7), ("a@h:1", 5, 7)
    assert pid != ref and ref != pid
    assert pid != tup and tup != pid and ref != tup
    assert len({pid, ref, tup}) == 3
    assert {pid: "p", ref: "r", tup: "t"}[ref] == "r"


def test_pids_are_immutable() -> None:
    pid = Pid("a@h:1", 5, 7)
    with pytest.raises(AttributeError):
        pid.node = "b@h:1"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pid.other = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        pid[0] = "b@h:1"  # type: ignore[index]
    assert not hasattr(pid, "__dict__")


@pytest.mark.parametrize("ident", [Pid("a@h:1", 5, 7), Ref("a@h:1", 5, 7)], ids=repr)
def test_pids_survive_copy_and_pickle(ident: Any) -> None:
    for clone in (copy.copy(ident), copy.deepcopy(ident), pickle.loads(pickle.dumps(ident))):
        assert clone == ident and type(clone) is type(ident)


# -- NodeConfig ------------------------------------------------------------------------------


def test_defaults_are_valid_and_frozen() -> None:
    cfg = NodeConfig()
    assert cfg.heartbeat_timeout >= 2 * cfg.heartbeat_interval
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden = True  # type: ignore[misc]


@pytest.mark.parametrize("options, says", [
    ({"port_range": (0, 10)}, "port_range"),
    ({"port_range": (10, 9)}, "port_range"),
    ({"port_range": (1, 65536)}, "port_range"),
    ({"pub_port": -1}, "pub_port"),
    ({"pub_port": 65536}, "pub_port"),
    ({"heartbeat_interval": 0}, "heartbeat_interval"),
    ({"heartbeat_timeout": -1}, "heartbeat_timeout"),
    ({"handshake_timeout": 0}, "handshake_timeout"),
    ({"drain_timeout": 0}, "drain_timeout"),
    ({"reconnect_max_backoff": 0}, "reconnect_max_backoff"),
    ({"heartbeat_interval": 0.6, "heartbeat_timeout": 1.0}, "twice"),
    ({"reconnect_window": -1}, "reconnect_window"),
    ({"reconnect_idle_backoff": 0}, "reconnect_idle_backoff"),
    ({"reconnect_give_up": -1}, "reconnect_give_up"),
    ({"max_frame": 0}, "max_frame"),
    ({"outbound_limit": 0}, "outbound_limit"),
    ({"sndhwm": 0}, "sndhwm"),
    ({"rcvhwm": 0}, "rcvhwm"),
])
def test_invalid_config_raises_config_error(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        NodeConfig(**options)


def test_boundary_values_are_accepted() -> None:
    NodeConfig(port_range=(1, 65535), pub_port=0, reconnect_window=0,
               heartbeat_interval=0.5, heartbeat_timeout=1.0, max_frame=1)


@pytest.mark.parametrize("field", ["heartbeat_interval", "heartbeat_timeout",
                                   "handshake_timeout", "drain_timeout", "reconnect_window",
                                   "reconnect_max_backoff", "reconnect_idle_backoff",
                                   "reconnect_give_up"])
def test_nan_is_rejected(field: str) -> None:
    with pytest.raises(ConfigError):
        NodeConfig(**{field: float("nan")})


@pytest.mark.parametrize("options", [{"heartbeat_interval": "0.5"}, {"max_frame": "1"},
                                     {"port_range": (9100,)}], ids=repr)
def test_wrong_types_raise_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        NodeConfig(**options)


KEY_A = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # Z85 keys (ZeroMQ's test vectors)
KEY_B = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"


@pytest.mark.parametrize("options", [
    {"curve_secret_key": "short"},
    {"curve_secret_key": KEY_A[:-1] + "~"},  # not in Z85's alphabet
    {"curve_allowed_keys": frozenset({KEY_A, "x" * 39})},
    {"curve_allowed_keys": [KEY_A]},  # a list: keys are a set
    {"encrypt_data_plane": "yes"},
], ids=repr)
def test_curve_keys_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        NodeConfig(**options)


def test_the_secret_key_is_not_in_the_repr() -> None:
    assert KEY_A not in repr(NodeConfig(curve_secret_key=KEY_A))


def test_from_env_reads_every_kind_of_field() -> None:
    cfg = NodeConfig.from_env({
        "FABRIC_PORT_RANGE": "9000-9010",
        "FABRIC_PUB_PORT": "9500",
        "FABRIC_BIND_HOST": "0.0.0.0",
        "FABRIC_HIDDEN": "true",
        "FABRIC_HEARTBEAT_INTERVAL": "0.25",
        "FABRIC_HEARTBEAT_TIMEOUT": "2",
        "FABRIC_HANDSHAKE_TIMEOUT": "4.5",
        "FABRIC_RECONNECT_WINDOW": "0",
        "FABRIC_RECONNECT_MAX_BACKOFF": "0.5",
        "FABRIC_RECONNECT_IDLE_BACKOFF": "7",
        "FABRIC_RECONNECT_GIVE_UP": "600",
        "FABRIC_MAX_FRAME": "1024",
        "FABRIC_OUTBOUND_LIMIT": "10",
        "FABRIC_MAILBOX_LIMIT": "13",
        "FABRIC_SNDHWM": "11",
        "FABRIC_RCVHWM": "12",
        "FABRIC_DRAIN_TIMEOUT": "3",
        "FABRIC_ALLOW_REMOTE_SPAWN": "app.a:f,app.b:g,",
        "FABRIC_DISCOVERY": "gossip:port=45900;hosts:path=/etc/fabric/hosts",
        "FABRIC_ENCRYPT_DATA_PLANE": "no",
        "FABRIC_CURVE_SECRET_KEY": KEY_A,
        "FABRIC_CURVE_ALLOWED_KEYS": f"{KEY_A},{KEY_B}",
        "FABRIC_STOP_GRACE": "4.5",
        "OTHER": "ignored",
    })
    assert cfg == NodeConfig(
        port_range=(9000, 9010), pub_port=9500, bind_host="0.0.0.0", hidden=True,
        heartbeat_interval=0.25, heartbeat_timeout=2.0, handshake_timeout=4.5,
        reconnect_window=0.0, reconnect_max_backoff=0.5, reconnect_idle_backoff=7.0,
        reconnect_give_up=600.0, max_frame=1024, outbound_limit=10,
        mailbox_limit=13, sndhwm=11, rcvhwm=12, drain_timeout=3.0, stop_grace=4.5,
        allow_remote_spawn=frozenset({"app.a:f", "app.b:g"}),
        discovery="gossip:port=45900;hosts:path=/etc/fabric/hosts", encrypt_data_plane=False,
        curve_secret_key=KEY_A, curve_allowed_keys=frozenset({KEY_A, KEY_B}))
    assert type(cfg.heartbeat_timeout) is float and type(cfg.max_frame) is int
    assert type(cfg.reconnect_window) is float


def test_every_field_has_an_env_variable() -> None:
    # from_env must know how to parse each field: a new field needs a test line above.
    names = {f.name for f in dataclasses.fields(NodeConfig)}
    tested = {"port_range", "pub_port", "bind_host", "hidden", "heartbeat_interval",
              "heartbeat_timeout", "handshake_timeout", "reconnect_window",
              "reconnect_max_backoff", "reconnect_idle_backoff", "reconnect_give_up",
              "max_frame", "outbound_limit", "mailbox_limit", "sndhwm", "rcvhwm",
              "drain_timeout", "stop_grace", "allow_remote_spawn", "discovery",
              "metrics_address",  # tests/test_metrics_collector.py
              "encrypt_data_plane", "curve_secret_key", "curve_allowed_keys"}
    assert names == tested


@pytest.mark.parametrize("raw, expected", [("9000", (9000, 9000)), ("9000-9000", (9000, 9000)),
                                           ("9000-", (9000, 9000))])
def test_from_env_port_range_forms(raw: str, expected: tuple[int, int]) -> None:
    assert NodeConfig.from_env({"FABRIC_PORT_RANGE": raw}).port_range == expected


@pytest.mark.parametrize("raw, expected", [("1", True), ("true", True), ("YES", True),
                                           ("0", False), ("false", False), ("", False)])
def test_from_env_hidden(raw: str, expected: bool) -> None:
    assert NodeConfig.from_env({"FABRIC_HIDDEN": raw}).hidden is expected


@pytest.mark.parametrize("var, raw", [
    ("FABRIC_HEARTBEAT_TIMEOUT", "soon"),
    ("FABRIC_MAX_FRAME", "1.5"),
    ("FABRIC_MAX_FRAME", ""),
    ("FABRIC_PORT_RANGE", "a-b"),
    ("FABRIC_PUB_PORT", "x"),
])
def test_from_env_unparsable_values_name_the_variable(var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=var):
        NodeConfig.from_env({var: raw})


def test_from_env_values_are_validated() -> None:
    with pytest.raises(ConfigError, match="heartbeat_timeout"):
        NodeConfig.from_env({"FABRIC_HEARTBEAT_TIMEOUT": "0.1"})


def test_overrides_beat_env_and_env_beats_defaults() -> None:
    env = {"FABRIC_HEARTBEAT_TIMEOUT": "3", "FABRIC_SNDHWM": "5"}
    cfg = NodeConfig.from_env(env, sndhwm=7, allow_remote_spawn=["m:f"])
    assert cfg.heartbeat_timeout == 3.0 and cfg.sndhwm == 7
    assert cfg.allow_remote_spawn == frozenset({"m:f"})
    assert cfg.rcvhwm == NodeConfig().rcvhwm


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_DRAIN_TIMEOUT", "7")
    assert NodeConfig.from_env().drain_timeout == 7.0
    monkeypatch.delenv("FABRIC_DRAIN_TIMEOUT")
    assert NodeConfig.from_env().drain_timeout == NodeConfig().drain_timeout


# -- the cookie ------------------------------------------------------------------------------


@pytest.fixture
def no_env_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABRIC_COOKIE", raising=False)


def test_cookie_argument_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FABRIC_COOKIE", "from-env")
    assert load_cookie("from-arg", home=tmp_path) == b"from-arg"
    assert load_cookie(b"\x00bytes", home=tmp_path) == b"\x00bytes"
    assert not (tmp_path / ".fabric.cookie").exists()


def test_cookie_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FABRIC_COOKIE", "from-env")
    assert load_cookie(home=tmp_path) == b"from-env"
    assert not (tmp_path / ".fabric.cookie").exists()


def test_empty_cookies_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_cookie("", home=tmp_path)
    with pytest.raises(ConfigError, match="empty"):
        load_cookie(b"", home=tmp_path)
    monkeypatch.setenv("FABRIC_COOKIE", "")  # set but empty: an error, not a fallback
    with pytest.raises(ConfigError, match="empty"):
        load_cookie(home=tmp_path)


@pytest.mark.usefixtures("no_env_cookie")
def test_cookie_file_created_0600_on_first_use(tmp_path: Path) -> None:
    first = load_cookie(home=tmp_path)
    path = tmp_path / ".fabric.cookie"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 24 and first == path.read_text().strip().encode()
    assert load_cookie(home=tmp_path) == first  # reused, not regenerated
    other = tmp_path / "other"
    other.mkdir()
    assert load_cookie(home=other) != first  # random per file


@pytest.mark.usefixtures("no_env_cookie")
def test_existing_cookie_file_is_read_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / ".fabric.cookie"
    path.write_text("  shared-secret\n")
    os.chmod(path, 0o400)
    assert load_cookie(home=tmp_path) == b"shared-secret"


@pytest.mark.usefixtures("no_env_cookie")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o610])
def test_unsafe_cookie_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / ".fabric.cookie"
    path.write_text("secret")
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_cookie(home=tmp_path)
    assert "secret" not in str(info.value).replace(str(tmp_path), "")


@pytest.mark.usefixtures("no_env_cookie")
def test_empty_cookie_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / ".fabric.cookie"
    path.write_text("\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="empty"):
        load_cookie(home=tmp_path)
