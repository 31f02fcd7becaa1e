"""``meridian ctl account …`` and configuration errors, through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.node import ROOT, NodeProcess
from tests.helpers.xmpp_client import AuthFailed, Client


def meridian(*args: str, cwd: Path, env: dict[str, str] | None = None,
             cli: str = "cluster_node.cli") -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", cli, *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=60)


def test_ctl_account_commands_share_defaults_with_node(tmp_path):
    # No --config: both use ./meridian-data (here under MERIDIAN_DATA_DIR).
    env = {"MERIDIAN_DATA_DIR": str(tmp_path / "data")}
    r = meridian("ctl", "account", "register-user", "--domain", "localhost", "--username", "Dave",
                 "--password", "pw1", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["data"]["account"]["registerUser"]["jid"] == "dave@localhost"
    assert (tmp_path / "data" / "meridian.db").exists()
    r = meridian("ctl", "account", "register-user", "--domain", "localhost", "--username", "dave",
                 "--password", "pw1", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "already exists" in json.loads(r.stderr)["errors"][0]["message"]
    meridian("ctl", "account", "register-user", "--domain", "localhost", "--username", "erin",
             "--password", "pw2", cwd=tmp_path, env=env)
    r = meridian("ctl", "account", "list-users", "--domain", "localhost", cwd=tmp_path, env=env)
    assert json.loads(r.stdout)["data"]["account"]["listUsers"] == ["dave@localhost", "erin@localhost"]
    r = meridian("ctl", "account", "count-users", "--domain", "localhost", cwd=tmp_path, env=env)
    assert json.loads(r.stdout)["data"]["account"]["countUsers"] == 2
    r = meridian("ctl", "account", "remove-user", "--domain", "localhost", "--username", "erin", cwd=tmp_path, env=env)
    assert r.returncode == 0
    r = meridian("ctl", "account", "check-user", "--domain", "localhost", "--username", "erin", cwd=tmp_path, env=env)
    assert json.loads(r.stdout)["data"]["account"]["checkUser"]["exist"] is False
    r = meridian("ctl", "account", "remove-user", "--domain", "localhost", "--username", "erin", cwd=tmp_path, env=env)
    assert r.returncode == 1
    r = meridian("ctl", "account", "register-user", "--domain", "elsewhere.example", "--username", "x",
                 "--password", "p", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "not served" in r.stderr
    # The stored credentials are SCRAM keys, never the password.
    db = (tmp_path / "data" / "meridian.db").read_bytes()
    assert b"pw1" not in db


async def test_changed_password_applies_to_logins(tmp_path):
    node = NodeProcess(tmp_path)
    node.register("frank", "old-password")
    node.start()
    try:
        node.ctl("account", "change-user-password", "--domain", "localhost", "--username", "frank",
                 "--password", "new-password")
        c = await Client("frank@localhost/r", "new-password", cert=node.cert).login(node.port)
        await c.close()
        old = Client("frank@localhost/r", "old-password", cert=node.cert)
        with pytest.raises(AuthFailed) as refused:
            await old.login(node.port)
        assert refused.value.sasl == "not-authorized", refused.value
        await old.close()
    finally:
        node.stop()


@pytest.mark.parametrize("toml, env, expected", [
    ("[c2s]\nport = 'abc'\n", {}, "c2s.port: Input should be a valid integer"),
    ("[c2s]\nprot = 5222\n", {}, "c2s.prot: unknown setting"),
    ("bogus = 1\n", {}, "bogus: unknown setting"),
    ("domains = ['not a domain!']\n", {}, "domains"),
    ("[limits]\nmax_stanza_size = 10\n", {}, "limits.max_stanza_size"),
    ("x = [\n", {}, "not valid TOML"),
    ("", {"MERIDIAN_C2S__TLS_PORT": "99999"}, "c2s.tls_port"),
    ("[c2s]\nresource_conflict = 'whatever'\n", {}, "c2s.resource_conflict"),
    ("[storage]\nurl = 'mysql://db'\n", {}, "storage.url"),
    ("[cluster]\nenabled = true\n", {}, "cluster.secret: at least 16 characters"),  # the secret missing
    ("[components.secrets]\n'svc.localhost' = 'short'\n", {}, "components.secrets.svc.localhost"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, toml, env, expected):
    conf = tmp_path / "node.toml"
    conf.write_text(toml)
    r = meridian("node", "--config", str(conf), cwd=tmp_path, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_missing_config_file(tmp_path):
    r = meridian("node", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_environment_overrides_the_file(tmp_path):
    from cluster_node.settings import load_settings

    conf = tmp_path / "node.toml"
    conf.write_text("node_name = 'from-file'\n[c2s]\nport = 6000\n")
    os.environ["MERIDIAN_C2S__PORT"] = "6001"
    try:
        s = load_settings(conf)
    finally:
        del os.environ["MERIDIAN_C2S__PORT"]
    assert s.node_name == "from-file" and s.c2s.port == 6001


def test_a_database_that_is_not_there_is_one_line_naming_it(tmp_path):
    """Valid settings naming a database nobody answers at: exit status 1, the last line names
    ``storage.url`` (password hidden) and why, no traceback — for the node and for ``ctl``."""
    conf = tmp_path / "node.toml"
    conf.write_text("[storage]\nurl = 'postgresql://meridian:hunter2@127.0.0.1:1/meridian'\n"
                    "[c2s]\nport = 0\ntls_port = 0\n[admin]\nport = 0\n[user_api]\nport = 0\n")
    r = meridian("node", "--config", str(conf), cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "storage.url (postgresql://meridian:***@127.0.0.1:1/meridian)" in last and "refused" in last.lower(), last
    assert "hunter2" not in r.stderr
    r = meridian("ctl", "--config", str(conf), "account", "count-users", "--domain", "localhost", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "storage.url" in r.stderr, r.stderr


GATEWAY = """node_name = 'gw'
domains = ['example.com']
[cluster]
enabled = true
secret = 'a-cluster-secret-long-enough'
port = 0
[admin]
port = 0
[gdistrib]
local_host = 'eu'
[gdistrib.connections]
ca_file = 'ca.pem'
cert_file = 'gw.pem'
key_file = 'gw.key'
"""


def test_a_global_host_the_region_does_not_serve_is_one_line(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text(GATEWAY.replace("local_host = 'eu'", "local_host = 'eu'\nglobal_host = ['other.example']"))
    r = meridian("gateway", "--config", str(conf), cwd=tmp_path, cli="gateway.cli")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "gdistrib.global_host: other.example not among this region's domains" in lines[0], \
        r.stderr


@pytest.mark.parametrize("redis, named", [
    ("[gdistrib.redis]\nurl = 'redis://:hunter2@127.0.0.1:1/0'\nstart_timeout = 1.5\n",
     "gdistrib.redis.url (redis://:***@127.0.0.1:1/0): no answer in 1.5 s"),
    ("[gdistrib.redis]\nsentinels = ['127.0.0.1:1']\nsentinel_master = 'mymaster'\nstart_timeout = 1.5\n",
     "gdistrib.redis.sentinels (127.0.0.1:1, primary 'mymaster'): no answer in 1.5 s"),
])
def test_a_gateway_whose_redis_does_not_answer_does_not_start(tmp_path, redis, named):
    """Nothing listens, nothing half-started: one line naming the endpoint, exit status 1."""
    conf = tmp_path / "gw.toml"
    conf.write_text(GATEWAY + redis)
    r = meridian("gateway", "--config", str(conf), cwd=tmp_path, cli="gateway.cli")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert named in last and "hunter2" not in r.stderr, r.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir()), "half-started"
